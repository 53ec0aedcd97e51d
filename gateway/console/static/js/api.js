// The API key lives in sessionStorage (gone when the tab closes) and travels as a Bearer token.

const KEY = "xgate.console.apiKey";

export function apiKey() { return window.sessionStorage.getItem(KEY); }
export function setApiKey(key) { window.sessionStorage.setItem(KEY, key); }
export function signOut() { window.sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.details = body && body.details;
  }
}

export async function api(path, { method = "GET", body, key } = {}) {
  const token = key || apiKey();
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && !key) {
      signOut();
      window.dispatchEvent(new CustomEvent("xgate:signed-out", { detail: err.message }));
    }
    throw err;
  }
  return data;
}

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : "";
}

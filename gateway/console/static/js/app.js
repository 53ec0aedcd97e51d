// Shell of the console: session, navigation (hash routes), page rendering.
import { api, apiKey, setApiKey, signOut, ApiError } from "./api.js";
import { h, clear, announce, field, add, fill } from "./ui.js";
import { exchangesView, entryView } from "./views/exchanges.js";
import { integrityView } from "./views/integrity.js";
import { alertsView } from "./views/alerts.js";
import { federationView } from "./views/federation.js";
import { policiesView } from "./views/policies.js";
import { trainingView } from "./views/training.js";
import { subjectView } from "./views/subject.js";

const ROUTES = {
  exchanges: exchangesView,
  entry: entryView,
  integrity: integrityView,
  alerts: alertsView,
  federation: federationView,
  policies: policiesView,
  training: trainingView,
  subject: subjectView,
};
const TITLES = {
  exchanges: "Exchanges", entry: "Exchange entry", integrity: "Integrity", alerts: "Alerts",
  federation: "Federation", policies: "Policies", training: "Training", subject: "Subject lookup",
};

let me = null;
let renderSeq = 0;
let navigated = false; // the first render of a page load leaves focus where the browser put it

export function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return { section: parts[0] || "exchanges", args: parts.slice(1), params: new URLSearchParams(query || "") };
}

export function go(section, params, args = []) {
  navigated = true;
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined)).toString() : "";
  const target = `#/${[section, ...args].join("/")}${q ? `?${q}` : ""}`;
  if (window.location.hash === target) render();
  else window.location.hash = target;
}

function renderSession() {
  const box = clear(document.getElementById("session"));
  const nav = document.getElementById("nav");
  if (!me) { nav.hidden = true; return; }
  nav.hidden = false;
  add(box, 
    h("span", { class: "who" }, "Signed in as ", h("strong", { id: "who-user" }, me.user)),
    h("span", { class: "role-chip", id: "who-role" }, me.role.replace("_", " ")),
    h("span", { class: "who-agency" }, me.agency),
    h("button", { type: "button", class: "btn btn-quiet", id: "sign-out", onclick: () => {
      signOut(); me = null; announce("Signed out"); go("signin");
    } }, "Sign out"));
}

function signInView(main, params) {
  const keyInput = h("input", { type: "password", name: "api_key", autocomplete: "off", spellcheck: "false",
    required: true, id: "api-key", placeholder: "xgk_\u2026" });
  const status = h("div", { id: "signin-status", role: "alert", "aria-live": "assertive" });
  const form = h("form", { class: "card signin", "aria-labelledby": "page-title", onsubmit: async (ev) => {
    ev.preventDefault();
    clear(status);
    const key = keyInput.value.trim();
    if (!key) { add(status, h("p", { class: "alert alert-bad" }, "Enter your API key.")); return; }
    try {
      const who = await api("/v1/whoami", { key });
      if (!who.console_allowed) {
        add(status, h("p", { class: "alert alert-bad" },
          `Signed in as ${who.user} (${who.role}), but the console is for security officers and administrators.`));
        return;
      }
      setApiKey(key);
      me = who;
      renderSession();
      announce(`Signed in as ${who.user}`);
      go(params.get("next") || "exchanges");
    } catch (e) {
      const msg = e instanceof ApiError && e.status === 401 ? "That API key was not accepted." : e.message;
      add(status, h("p", { class: "alert alert-bad" }, msg));
    }
  } },
  h("h1", { tabindex: "-1", id: "page-title" }, "Sign in"),
  h("p", { class: "subtitle" }, "Use the same API key as for the REST API. It is kept in this tab only (session storage) and sent as a Bearer token."),
  field("API key", keyInput, "Security officers and administrators only."),
  h("button", { type: "submit", class: "btn btn-primary", id: "sign-in" }, "Sign in"),
  status);
  add(main, form);
  if (params.get("expired")) add(status, h("p", { class: "alert alert-warn" }, params.get("expired")));
  keyInput.focus();
}

async function ensureSession() {
  if (me || !apiKey()) return me;
  try {
    me = await api("/v1/whoami");
    if (!me.console_allowed) { signOut(); me = null; }
  } catch (_) {
    me = null;
  }
  return me;
}

async function render() {
  const seq = ++renderSeq;
  const main = document.getElementById("main");
  const { section, args, params } = parseHash();
  await ensureSession();
  if (seq !== renderSeq) return;
  renderSession();
  clear(main);
  if (!me || section === "signin") {
    document.title = "Sign in \u2014 xgate console";
    signInView(main, params);
    return;
  }
  const view = ROUTES[section] || exchangesView;
  const navSection = section === "entry" ? "exchanges" : section;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === navSection) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${TITLES[section] || "Exchanges"} \u2014 xgate console`;
  const ctx = { me, args, params, go, isCurrent: () => seq === renderSeq };
  const focusFrom = document.activeElement;
  const pending = view(main, ctx); // runs synchronously up to its first await: the heading exists now
  // Move focus to the new page's heading so keyboard and screen-reader users land on it.
  if (navigated && (!focusFrom || !main.contains(focusFrom) || !focusFrom.isConnected)) {
    const title = document.getElementById("page-title");
    if (title) title.focus({ preventScroll: false });
  }
  try {
    await pending;
  } catch (e) {
    if (seq === renderSeq) add(main, h("div", { class: "alert alert-bad", role: "alert" }, e.message));
  }
}

window.addEventListener("hashchange", () => {
  navigated = true;
  if (window.location.hash.startsWith("#/") || window.location.hash === "") render();
});
window.addEventListener("xgate:signed-out", (ev) => {
  me = null;
  go("signin", { expired: `Signed out: ${ev.detail}` });
});
document.addEventListener("DOMContentLoaded", () => {
  document.querySelector(".skip-link").addEventListener("click", (ev) => {
    ev.preventDefault();
    const title = document.getElementById("page-title");
    (title || document.getElementById("main")).focus();
  });
  render();
});

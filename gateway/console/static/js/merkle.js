// In-browser verification of audit evidence with WebCrypto only (no crypto is implemented here):
// RFC 6962 / RFC 9162 leaf and node hashing, inclusion-proof verification (RFC 9162 §2.1.3.2),
// and the C2SP signed-note Ed25519 signature on a checkpoint.

export function hasWebCrypto() {
  return !!(window.crypto && window.crypto.subtle);
}

export function hexToBytes(hex) {
  if (typeof hex !== "string" || hex.length % 2 || /[^0-9a-f]/i.test(hex)) throw new Error("not hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}
export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
export function b64ToBytes(b64) {
  const bin = window.atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export async function sha256(bytes) {
  return new Uint8Array(await window.crypto.subtle.digest("SHA-256", bytes));
}
export async function leafHash(data) { return sha256(concat(new Uint8Array([0]), data)); }
export async function nodeHash(left, right) { return sha256(concat(new Uint8Array([1]), left, right)); }

// Root implied by an inclusion proof (RFC 9162 §2.1.3.2). Plain arithmetic instead of bit
// operators, which would truncate indices above 2^31.
export async function rootFromInclusionProof(index, size, leaf, proof) {
  if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size)) || index < 0 || index >= size) {
    throw new Error("index is outside the tree");
  }
  if (leaf.length !== 32) throw new Error("leaf hash must be 32 bytes");
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (p.length !== 32) throw new Error("proof hashes must be 32 bytes");
    if (sn === 0) throw new Error("proof is too long");
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new Error("proof is too short");
  return r;
}

export async function verifyInclusion(index, size, leaf, proof, root) {
  const computed = await rootFromInclusionProof(index, size, leaf, proof);
  if (!equal(computed, root)) throw new Error("the proof leads to a different root");
  return computed;
}

// A C2SP signed note: body lines, a blank line, then "— <name> <base64(keyid ‖ signature)>" lines.
export function parseNote(text) {
  const cut = text.indexOf("\n\n");
  if (cut < 0) throw new Error("note has no signature block");
  const body = text.slice(0, cut + 1);
  const lines = body.split("\n");
  if (lines.length < 4) throw new Error("checkpoint body is too short");
  const size = Number(lines[1]);
  if (!/^(0|[1-9][0-9]*)$/.test(lines[1]) || !Number.isSafeInteger(size)) throw new Error("bad tree size");
  const signatures = text.slice(cut + 2).split("\n").filter((l) => l.length).map((l) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(l);
    if (!m) throw new Error("malformed signature line");
    return { name: m[1], blob: b64ToBytes(m[2]) };
  });
  return { body, origin: lines[0], size, root: b64ToBytes(lines[2]), signatures };
}

export async function ed25519Supported() {
  try {
    await window.crypto.subtle.importKey("raw", new Uint8Array(32).fill(1), { name: "Ed25519" }, false, ["verify"]);
    return true;
  } catch (_) {
    return false;
  }
}

// Verify the log's signature on a note with its raw Ed25519 public key (key id per signed-note).
export async function verifyNoteSignature(note, origin, publicKey) {
  const keyId = (await sha256(concat(new TextEncoder().encode(`${origin}\n`), new Uint8Array([1]), publicKey))).slice(0, 4);
  const sig = note.signatures.find((s) => s.name === origin && s.blob.length === 68 && equal(s.blob.slice(0, 4), keyId));
  if (!sig) throw new Error("the note carries no signature by the log key");
  const key = await window.crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  const ok = await window.crypto.subtle.verify({ name: "Ed25519" }, key, sig.blob.slice(4), new TextEncoder().encode(note.body));
  if (!ok) throw new Error("the log signature does not verify");
  return bytesToHex(keyId);
}

// Everything the console checks for one entry. Each step: {name, ok: true|false|null, detail}.
export async function verifyEntry(entry, logKey) {
  const steps = [];
  if (!hasWebCrypto()) {
    return { status: "unavailable", steps: [{ name: "WebCrypto", ok: null, detail: "this page is not a secure context: WebCrypto is unavailable" }] };
  }
  const data = b64ToBytes(entry.data_b64);
  const leaf = await leafHash(data);
  const stored = hexToBytes(entry.leaf_hash);
  const leafOk = equal(leaf, stored);
  steps.push({ name: "Leaf hash", ok: leafOk, detail: leafOk
    ? `SHA-256(0x00 \u2016 data) = ${bytesToHex(leaf).slice(0, 16)}\u2026 matches the stored leaf hash`
    : `SHA-256(0x00 \u2016 data) = ${bytesToHex(leaf).slice(0, 16)}\u2026 but the stored leaf hash is ${entry.leaf_hash.slice(0, 16)}\u2026: the data was altered` });
  const cp = entry.checkpoint;
  if (!cp || !entry.inclusion_proof) {
    steps.push({ name: "Inclusion proof", ok: null, detail: "no signed checkpoint covers this entry yet" });
    return { status: leafOk ? "pending" : "not_verified", steps };
  }
  let note = null;
  try {
    note = parseNote(cp.note);
    const same = note.size === cp.size && bytesToHex(note.root) === cp.root;
    steps.push({ name: "Checkpoint note", ok: same, detail: same
      ? `signed note states size ${note.size} and root ${cp.root.slice(0, 16)}\u2026`
      : "the signed note does not state the checkpoint's size and root" });
  } catch (e) {
    steps.push({ name: "Checkpoint note", ok: false, detail: e.message });
  }
  try {
    // The leaf is recomputed from the data: altered data cannot reach the signed root.
    await verifyInclusion(entry.index, cp.size, leaf, entry.inclusion_proof.map(hexToBytes), hexToBytes(cp.root));
    steps.push({ name: "Inclusion proof", ok: true, detail: `${entry.inclusion_proof.length} hashes lead from this entry to the root of tree size ${cp.size}` });
  } catch (e) {
    steps.push({ name: "Inclusion proof", ok: false, detail: `does not verify: ${e.message}` });
  }
  if (note && logKey && logKey.public_key_b64) {
    if (await ed25519Supported()) {
      try {
        const kid = await verifyNoteSignature(note, logKey.origin, b64ToBytes(logKey.public_key_b64));
        steps.push({ name: "Checkpoint signature", ok: true, detail: `Ed25519 signature by ${logKey.origin} (key id ${kid}) verifies` });
      } catch (e) {
        steps.push({ name: "Checkpoint signature", ok: false, detail: e.message });
      }
    } else {
      steps.push({ name: "Checkpoint signature", ok: null, detail: "this browser's WebCrypto has no Ed25519: signature checked by the server only" });
    }
  } else {
    steps.push({ name: "Checkpoint signature", ok: null, detail: "log public key not configured on the gateway" });
  }
  const failed = steps.some((s) => s.ok === false);
  const essential = steps.filter((s) => s.name !== "Checkpoint signature").every((s) => s.ok === true);
  return { status: failed ? "not_verified" : essential ? "verified" : "incomplete", steps };
}

"""Homomorphic encryption for eligibility checks: the only module that imports TenSEAL.

Scheme: BFV (exact integer arithmetic), N = 8192 slots, a 58-bit batching prime as plaintext
modulus. Roles:

* the requester generates a key pair (:class:`RequesterKeys`) and ships only the public context;
* a node encrypts its values for the requested subjects (:meth:`PublicContext.encrypt`);
* the gateway adds the ciphertexts of a criterion's terms and masks the difference to the
  threshold with plaintext operations only (:meth:`PublicContext.mask_criterion`);
* the requester decrypts and keeps only the sign (:meth:`RequesterKeys.decrypt_signs`).

Every byte string arriving from another party goes through a validating loader that raises
:class:`CryptoError` with a reason; nothing here logs keys or values.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from xgate.errors import CryptoError, PayloadTooLarge

HE_PARAMS_ID = "bfv-n8192-t58/1"
POLY_MODULUS_DEGREE = 8192
SLOTS = POLY_MODULUS_DEGREE
# Largest prime p < 2^58 with p = 1 (mod 2N), so the plaintext ring batches into N slots.
PLAIN_MODULUS = 288230376150876161
COEFF_MOD_BIT_SIZES = (60, 60, 60, 38)
# The masked value r*d + s' must stay below t/2 to decode with its sign: crypto.masks bounds r
# by (t/2 - 1) / (D + 1) for a criterion whose |d| is at most D <= MAX_ABS_DIFFERENCE.
MAX_ABS_DIFFERENCE = 2**24
# Noise flooding (see PublicContext.flood): each result ciphertext gets an encryption of zero whose
# noise is multiplied by a random full-size plaintext and then by a sparse random plaintext with
# FLOOD_TERMS coefficients below 2^FLOOD_BITS. Measured with the secret key (tests): a masked result
# keeps ~51 of its 114 fresh noise-budget bits; the flood term's noise is ~2^43 times larger than
# that and leaves ~9 bits, so decryption stays exact.
FLOOD_BITS = 40
FLOOD_TERMS = 64

MAX_CONTEXT_BYTES = 2 * 1024 * 1024
_CONTEXT_CACHE_SIZE = 16
MAX_CIPHERTEXT_BYTES = 1024 * 1024
# Result ciphertexts are modulus-switched this many levels down before they leave the gateway.
RESULT_LEVELS_DROPPED = 1


def chunk_count(subjects: int) -> int:
    """How many slot-packed ciphertexts hold `subjects` values."""
    return max(1, -(-subjects // SLOTS))


def chunks(values: Sequence[int], size: int = SLOTS) -> list[Sequence[int]]:
    return [values[i : i + size] for i in range(0, max(len(values), 1), size)]


@cache
def _reference_parms_id() -> tuple[int, ...]:
    reference = _new_secret_context()
    return tuple(reference.seal_context().data.key_parms_id())


def _new_secret_context() -> ts.Context:
    return ts.context(
        ts.SCHEME_TYPE.BFV,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        plain_modulus=PLAIN_MODULUS,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
    )


def _check_params(ctx: ts.Context) -> None:
    # SEAL's parms_id is a hash over scheme, degree, coefficient and plaintext moduli:
    # equality with our reference pins every parameter the masking bound depends on.
    if tuple(ctx.seal_context().data.key_parms_id()) != _reference_parms_id():
        raise CryptoError(f"HE context does not use the federation parameters {HE_PARAMS_ID}")


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CONTEXT_FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def context_fingerprint(data: bytes) -> str:
    """How a registered public context is named (POST /v1/contexts, checks, node requests)."""
    return f"sha256:{fingerprint(data)}"


def parse_context_fingerprint(value: str) -> bytes:
    """The SHA-256 digest a context fingerprint names; CryptoError when it is not `sha256:<64 hex>`."""
    if not CONTEXT_FINGERPRINT_RE.match(value):
        raise CryptoError("context fingerprint must be 'sha256:' followed by 64 lower-case hex digits")
    return bytes.fromhex(value[7:])


class RequesterKeys:
    """The requester's BFV key pair. The secret key never leaves this object or its key file."""

    def __init__(self, ctx: ts.Context) -> None:
        if not ctx.has_secret_key():
            raise CryptoError("requester keys need a context with a secret key")
        _check_params(ctx)
        self._ctx = ctx
        self._public = self._serialize_public()

    @classmethod
    def generate(cls) -> RequesterKeys:
        return cls(_new_secret_context())

    @classmethod
    def load(cls, path: Path) -> RequesterKeys:
        try:
            ctx = ts.context_from(path.read_bytes())
        except (ValueError, RuntimeError) as exc:
            raise CryptoError(f"key file {path} is not a TenSEAL context") from exc
        return cls(ctx)

    def save(self, path: Path) -> None:
        """Write the secret context to a file readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self._ctx.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(data)
        tmp.replace(path)

    def _serialize_public(self) -> bytes:
        public = self._ctx.copy()
        public.make_context_public()
        # No Galois or relinearisation keys: the protocol needs neither, and Galois keys are ~55 MB.
        return bytes(
            public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
        )

    @property
    def public_context(self) -> bytes:
        return self._public

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self._public)

    def decrypt_masked(self, ciphertext: bytes, count: int) -> np.ndarray:
        """The masked values r*d + s' themselves (protocol audits and tests; clients keep only signs)."""
        vector = _load_vector(self._ctx, ciphertext, count)
        return np.asarray(vector.decrypt(), dtype=np.int64)

    def decrypt_signs(self, ciphertext: bytes, count: int) -> np.ndarray:
        """Decrypt one masked result chunk; True where the criterion holds (masked value >= 0)."""
        return self.decrypt_masked(ciphertext, count) >= 0


@dataclass(frozen=True)
class Ciphertext:
    """A validated slot-packed ciphertext: its bytes, known to load under the context."""

    data: bytes
    count: int


def _load_vector(ctx: ts.Context, data: bytes, expected_count: int) -> ts.BFVVector:
    if len(data) > MAX_CIPHERTEXT_BYTES:
        raise PayloadTooLarge(f"ciphertext of {len(data)} bytes exceeds {MAX_CIPHERTEXT_BYTES}")
    try:
        vector = ts.bfv_vector_from(ctx, data)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CryptoError("ciphertext is malformed or not under the requester's HE parameters") from exc
    if vector.size() != expected_count:
        raise CryptoError(f"ciphertext holds {vector.size()} slots, expected {expected_count}")
    for part in vector.ciphertext():
        # A transparent ciphertext is a plaintext in disguise; a fresh or added one has 2 parts.
        if part.is_transparent() or part.size() != 2:
            raise CryptoError("ciphertext is transparent or not a fresh 2-part BFV ciphertext")
    return vector


def centered(values: np.ndarray | Sequence[int]) -> list[int]:
    """Integers reduced to their representative in (-t/2, t/2]: what the plaintext slots hold."""
    half = PLAIN_MODULUS // 2
    out = []
    for value in values:
        x = int(value) % PLAIN_MODULUS
        out.append(x - PLAIN_MODULUS if x > half else x)
    return out


@cache
def _vector_proto() -> type[Message]:
    """TenSEAL's BFVVectorProto (tenseal/proto/tensors.proto: sizes = 1, ciphertexts = 2).

    TenSEAL ships the .proto but no Python module for it; the flood term is built over all N slots
    and re-labelled with the result's slot count, which only this message carries.
    """
    fdp = descriptor_pb2.FileDescriptorProto(name="xgate_tenseal_tensors.proto", package="xgate_tenseal")
    fdp.syntax = "proto3"
    msg = fdp.message_type.add(name="BFVVectorProto")
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    msg.field.add(name="sizes", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT32, label=repeated)
    msg.field.add(name="ciphertexts", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES, label=repeated)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("xgate_tenseal.BFVVectorProto"))


def _relabelled(data: bytes, count: int) -> bytes:
    """The same BFV vector with its slot count (BFVVectorProto.sizes) set to `count`."""
    proto = _vector_proto()()
    proto.ParseFromString(data)
    del proto.sizes[:]  # type: ignore[attr-defined]
    proto.sizes.append(count)  # type: ignore[attr-defined]
    return bytes(proto.SerializeToString())


def _save_ciphertext(part: sealapi.Ciphertext) -> bytes:
    """SEAL's own serialisation of one ciphertext (TenSEAL binds `save` to a path only): written to
    an anonymous in-memory file and read back."""
    fd = os.memfd_create("xgate-ciphertext", os.MFD_CLOEXEC)
    try:
        part.save(f"/proc/self/fd/{fd}")
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _random_words(n: int) -> np.ndarray:
    return np.frombuffer(os.urandom(8 * n), dtype="<u8")


class FloodTerm:
    """One prepared flood term (an encryption of zero with large noise) for one result; used once.
    Held serialised, so it can be prepared in one process and used in another."""

    def __init__(self, data: bytes, count: int) -> None:
        self._data: bytes | None = data
        self.count = count

    def take(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise CryptoError("a flood term is used once")
        return data


_CACHE_LOCK = threading.Lock()
_CONTEXT_CACHE: OrderedDict[bytes, PublicContext] = OrderedDict()


class PublicContext:
    """A requester's public context as received by a node or the gateway: validated on load."""

    def __init__(self, data: bytes) -> None:
        if len(data) > MAX_CONTEXT_BYTES:
            raise PayloadTooLarge(f"HE public context of {len(data)} bytes exceeds {MAX_CONTEXT_BYTES}")
        try:
            ctx = ts.context_from(data)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CryptoError("HE public context is malformed") from exc
        if ctx.has_secret_key() or not ctx.is_public():
            raise CryptoError("HE context carries a secret key; send the public context only")
        if not ctx.has_public_key():
            raise CryptoError("HE context has no public key")
        if ctx.has_galois_keys():
            raise CryptoError("HE context carries Galois keys, which the protocol does not use")
        _check_params(ctx)
        if ctx.has_relin_keys():
            # Unused (the gateway never relinearises); refused so a context is what the protocol says it is.
            raise CryptoError("HE context carries relinearisation keys, which the protocol does not use")
        self._ctx = ctx
        self.data = data
        self.fingerprint = fingerprint(data)
        self.ref = f"sha256:{self.fingerprint}"
        self._encoder = sealapi.BatchEncoder(ctx.seal_context().data)
        self._evaluator = sealapi.Evaluator(ctx.seal_context().data)
        self._top = ctx.seal_context().data.first_parms_id()

    def encrypt(self, values: Sequence[int]) -> bytes:
        """Encrypt up to SLOTS integers into one ciphertext (node side)."""
        if not 0 < len(values) <= SLOTS:
            raise CryptoError(f"can encrypt 1..{SLOTS} values per ciphertext, got {len(values)}")
        return bytes(ts.bfv_vector(self._ctx, [int(v) for v in values]).serialize())

    def _encrypt_exactly(self, values: list[int]) -> ts.BFVVector:
        """Enc(values) with every slot past them 0. TenSEAL fills a short vector's other slots with
        copies of it; an offset s' - direction*r*T copied there would hand a client that decrypts
        all N slots both s' + r*T and r*(T - S) + s', hence r and the sum S (measured:
        tests/attacks/test_offset_copies.py)."""
        full = ts.bfv_vector(self._ctx, values + [0] * (SLOTS - len(values)))
        return ts.bfv_vector_from(self._ctx, _relabelled(full.serialize(), len(values)))

    @classmethod
    def cached(cls, data: bytes, *, remember: bool = True) -> PublicContext:
        """Validate once per distinct context: requesters reuse key pairs across checks, and
        deserialising a context costs ~11 ms while hashing it costs ~0.3 ms. `remember=False`:
        validated but not kept (a node keeps a context only once its requester's statement
        verified, `remember`, so unsigned requests cannot push real requesters' contexts out)."""
        digest = hashlib.sha256(data).digest()
        with _CACHE_LOCK:
            hit = _CONTEXT_CACHE.get(digest)
            if hit is not None:
                _CONTEXT_CACHE.move_to_end(digest)
                return hit
        context = cls(data)
        if remember:
            cls.remember(context)
        return context

    @classmethod
    def remember(cls, context: PublicContext) -> None:
        """Keep `context` in the process's bounded LRU (found again by `known` and `cached`)."""
        with _CACHE_LOCK:
            _CONTEXT_CACHE[bytes.fromhex(context.fingerprint)] = context
            _CONTEXT_CACHE.move_to_end(bytes.fromhex(context.fingerprint))
            while len(_CONTEXT_CACHE) > _CONTEXT_CACHE_SIZE:
                _CONTEXT_CACHE.popitem(last=False)

    @classmethod
    def known(cls, ref: str) -> PublicContext | None:
        """The context cached under this fingerprint (a bounded LRU, per process), or None."""
        digest = parse_context_fingerprint(ref)
        with _CACHE_LOCK:
            hit = _CONTEXT_CACHE.get(digest)
            if hit is not None:
                _CONTEXT_CACHE.move_to_end(digest)
            return hit

    def load(self, data: bytes, expected_count: int) -> Ciphertext:
        """A node's fresh ciphertext: valid, of the right size, at the top modulus level (the
        masking product needs all of its noise budget)."""
        vector = _load_vector(self._ctx, data, expected_count)
        if any(part.parms_id() != self._top for part in vector.ciphertext()):
            raise CryptoError("ciphertext is not at the top modulus level")
        return Ciphertext(data, expected_count)

    def load_pad(self, data: bytes, count: int) -> Ciphertext:
        """A node's pad ciphertext Enc(rho) (fresh, top level, all SLOTS slots), re-labelled to the
        result's first `count` slots: a pad serves many checks, each at its own window, and the
        combination reads only the slots its weights select (every other slot is multiplied by 0)."""
        if not 0 < count <= SLOTS:
            raise CryptoError(f"a pad serves 1..{SLOTS} slots, got {count}")
        self.load(data, SLOTS)
        return Ciphertext(_relabelled(data, count), count)

    def mask_criterion(
        self,
        terms: Sequence[Ciphertext],
        direction: int,
        threshold: int,
        r: np.ndarray,
        s: np.ndarray,
        flood: bool | FloodTerm = True,
    ) -> bytes:
        """Return Enc(r * d + s') with d = direction * (sum(terms) - threshold).

        direction = -1 encodes "sum <= threshold" (d = T - S), +1 encodes "sum >= threshold".
        With 1 <= r and 0 <= s' < r, the result is >= 0 exactly when d >= 0.
        """
        if direction not in (-1, 1):
            raise CryptoError("direction must be -1 (at most) or +1 (at least)")
        if len(r) != len(s):
            raise CryptoError("criterion terms and masks disagree on the number of subjects")
        r64 = r.astype(np.int64)
        # direction*(S - T)*r + s'  ==  (direction*r)*S + (s' - direction*r*T), the offset in Python
        # integers: r*T can exceed 64 bits when r is large (small spans) and T is large.
        offset = s.astype(object) - direction * r.astype(object) * int(threshold)
        return self.masked_combination([terms], [direction * r64], offset, flood=flood)

    def masked_combination(
        self,
        groups: Sequence[Sequence[Ciphertext]],
        weights: Sequence[np.ndarray],
        offset: np.ndarray,
        flood: bool | FloodTerm = True,
    ) -> bytes:
        """Enc(sum_m weights[m] * sum(groups[m]) + offset), slot-wise, one plaintext product deep.

        Everything the gateway computes is this: a weighted sum of term sums plus a fresh
        encryption of an offset (which also re-randomises the result) and a flood term (see
        `flood`; `flood=False` only for tests that measure what it hides). BFV noise allows a
        single plaintext multiplication by the masks, so selections (zero weights) are folded into
        that one product rather than applied afterwards.
        """
        if not groups or len(groups) != len(weights) or any(not g for g in groups):
            raise CryptoError("a combination needs at least one non-empty group and one weight vector per group")
        count = groups[0][0].count
        if any(t.count != count for g in groups for t in g) or any(len(w) != count for w in weights):
            raise CryptoError("criterion terms and masks disagree on the number of subjects")
        if len(offset) != count:
            raise CryptoError("criterion terms and masks disagree on the number of subjects")
        acc: ts.BFVVector | None = None
        for group, weight in zip(groups, weights, strict=True):
            if not np.any(weight):
                continue  # an all-zero weight contributes nothing (and would give a transparent product)
            # Reload from bytes rather than copy(): BFVVector.copy() costs ~13 ms, a reload ~0.2 ms.
            total = ts.bfv_vector_from(self._ctx, group[0].data)
            for term in group[1:]:
                total.add_(ts.bfv_vector_from(self._ctx, term.data))
            total.mul_(weight.astype(np.int64).tolist())
            if acc is None:
                acc = total
            else:
                acc.add_(total)
        if acc is None:
            raise CryptoError("every weight is zero")
        acc.add_(self._encrypt_exactly(centered(offset)))
        if isinstance(flood, FloodTerm):
            if flood.count != count:
                raise CryptoError("flood term and result disagree on the number of subjects")
            acc.add_(ts.bfv_vector_from(self._ctx, flood.take()))
        elif flood:
            acc.add_(self.flood(count))
        return self.switched(acc)

    def switched(self, vector: ts.BFVVector) -> bytes:
        """The result serialised one modulus level down (RESULT_LEVELS_DROPPED): 2 of its 3 primes.

        Measured with the secret key (tests/unit/test_result_size.py): a flooded result keeps its ~9
        bits of noise budget after one switch and decrypts exactly; a second switch (to the last
        60-bit prime against a 58-bit plaintext modulus) leaves none. 393 kB -> 262 kB per result.
        SEAL's compressed serialisation (zstd, TenSEAL's default) gains nothing here: the
        coefficients are uniformly random.
        """
        proto = _vector_proto()()
        proto.ParseFromString(vector.serialize())
        parts = []
        for part in vector.ciphertext():
            lower = sealapi.Ciphertext()
            for _ in range(RESULT_LEVELS_DROPPED):
                self._evaluator.mod_switch_to_next(part, lower)
                part = lower
            parts.append(_save_ciphertext(lower))
        del proto.ciphertexts[:]  # type: ignore[attr-defined]
        proto.ciphertexts.extend(parts)  # type: ignore[attr-defined]
        return bytes(proto.SerializeToString())

    def flood_terms(self, counts: Sequence[int]) -> list[FloodTerm]:
        """Flood terms for result ciphertexts of these slot counts, ahead of time: they depend on
        nothing but the requester's public key, so the gateway builds them during the fan-out."""
        return [FloodTerm(self.flood_bytes(count), count) for count in counts]

    def flood(self, count: int) -> ts.BFVVector:
        """A fresh flood term (see `flood_bytes`), loaded."""
        return ts.bfv_vector_from(self._ctx, self.flood_bytes(count))

    def flood_bytes(self, count: int) -> bytes:
        """A fresh encryption of zero in `count` slots whose noise swamps a masked result's.

        Enc(0) is multiplied by a plaintext with uniformly random slots (full-size coefficients,
        like the mask product itself) and then by a sparse plaintext polynomial with FLOOD_TERMS
        random coefficients of up to FLOOD_BITS bits. Multiplying a zero keeps it zero; the noise
        becomes a sum of many independent products, ~2^43 times the noise of the masked result,
        so the result's noise no longer depends measurably on r, s' or the inputs. The
        randomness comes from os.urandom and is never stored.
        """
        if not 0 < count <= SLOTS:
            raise CryptoError(f"can flood 1..{SLOTS} slots, got {count}")
        t = np.uint64(PLAIN_MODULUS)
        zero = ts.bfv_vector(self._ctx, [0] * SLOTS)
        zero.mul_((_random_words(SLOTS) % t).astype(np.int64).tolist())
        positions = np.unique(_random_words(FLOOD_TERMS) % np.uint64(POLY_MODULUS_DEGREE))
        magnitudes = _random_words(len(positions)) % np.uint64(1 << FLOOD_BITS) + np.uint64(1)
        negative = (_random_words(len(positions)) & np.uint64(1)).astype(bool)
        coefficients = np.where(negative, t - magnitudes, magnitudes)
        # SEAL's plaintext syntax: hexadecimal coefficients, highest degree first.
        terms = sorted(zip(positions.tolist(), coefficients.tolist(), strict=True), reverse=True)
        small = sealapi.Plaintext(" + ".join(f"{c:X}x^{p}" if p else f"{c:X}" for p, c in terms))
        zero.mul_(self._encoder.decode_int64(small))
        return _relabelled(zero.serialize(), count)

"""Decoders for the image-token loop: prefill once, then one token per sequence per step.

``DynamicDecoder`` is the plain path: ``UnifiedLM.prefill`` / ``decode_step`` over a growing
``transformers`` ``DynamicCache``. ``StaticDecoder`` preallocates everything a step touches (a
``StaticCache`` of ``max_len`` slots, a (B, 1, 1, max_len) boolean attention mask, the input
ids), so that every step is the same sequence of kernels on the same buffers; on a GPU it
captures that step once as a CUDA graph and replays it. At batch 1 a small LM's step is
dominated by host work (hundreds of kernel launches from Python), not by arithmetic, and a
replay launches them all at once.

How a step sees the cache: slots ``[0, P)`` hold the left-padded prompt, slot ``P + t`` the
t-th generated token; the mask marks the real ones. Slots not yet written hold zeros and are
masked out. Positions come from the mask (count of real tokens - 1); prefill and step go through
``UnifiedLM.prefill`` / ``decode_step`` with the static cache and a finished 4D mask.

Pick one with :func:`make_decoder`; ``mode`` is ``ImageSamplingConfig.kv_cache``.
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from lavit.config import KV_CACHE_MODES
from lavit.model import UnifiedLM

MAX_KEPT = 4  # static decoders kept per LM


class DynamicDecoder:
    """``UnifiedLM.prefill`` / ``decode_step`` with a growing cache and a preallocated mask."""

    def __init__(self, lm: UnifiedLM, max_new: int) -> None:
        self.lm, self.max_new = lm, max_new

    def prefill(self, ids, mask, features=None, feature_mask=None) -> torch.Tensor:
        logits, self.cache = self.lm.prefill(ids, mask, features, feature_mask)
        # Every step's mask is a prefix of this one: no allocation per step.
        self.mask = torch.cat([mask, mask.new_ones(mask.shape[0], self.max_new)], dim=1)
        self.length = mask.shape[1]
        return logits

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) new ids -> (B, V) logits for the next one."""
        self.length += 1
        return self.lm.decode_step(ids[:, None], self.mask[:, : self.length], self.cache)


class StaticDecoder:
    """Static KV cache and buffers for ``batch`` sequences of up to ``max_len`` tokens; with
    ``graph=True`` (CUDA only) the decode step is captured on first use and replayed after.

    One instance serves many generations of the same shape (a new prefill resets it), so the
    capture is paid once: ``UnifiedLM`` keeps them (see :func:`make_decoder`).
    """

    def __init__(self, lm: UnifiedLM, batch: int, max_len: int, graph: bool) -> None:
        if graph and next(lm.parameters()).device.type != "cuda":
            raise ValueError("CUDA graphs need the LM on a CUDA device; use kv_cache: static or dynamic")
        if not lm.takes_decode_mask:
            raise ValueError(
                "a static KV cache needs SDPA attention without sliding windows "
                f"(this LM: {lm.hf.config._attn_implementation}); use kv_cache: dynamic"
            )
        device = next(lm.parameters()).device
        self.lm, self.batch, self.max_len, self.use_graph = lm, batch, max_len, graph
        self.cache = StaticCache(config=lm.hf.config, max_cache_len=max_len)
        self.mask = torch.zeros(batch, 1, 1, max_len, dtype=torch.bool, device=device)
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output buffer
        self.length = 0

    def prefill(self, ids, mask, features=None, feature_mask=None) -> torch.Tensor:
        b, p = ids.shape
        if b != self.batch or p >= self.max_len:
            raise ValueError(
                f"prompt batch {tuple(ids.shape)} does not fit a decoder of {self.batch} x {self.max_len}; "
                "get one sized for it from make_decoder(lm, batch, prompt_len, max_new, mode)"
            )
        for layer in self.cache.layers:  # start over: the prompt goes to slots [0, p)
            layer.cumulative_length.zero_()
        self.mask.zero_()
        self.mask[:, 0, 0, :p] = mask.bool()
        causal = torch.ones(p, self.max_len, dtype=torch.bool, device=ids.device).tril()
        # (B, 1, p, max_len): no real query sees a padding key; a padding query sees itself, as
        # a row with no key at all may give NaNs in some SDPA kernels (and NaN keys next layer).
        prefill_mask = causal[None, None] & self.mask | torch.eye(p, self.max_len, dtype=torch.bool, device=ids.device)
        logits, _ = self.lm.prefill(ids, mask, features, feature_mask, cache=self.cache, hf_mask=prefill_mask)
        self.length = p
        return logits

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) new ids -> (B, V) logits for the next one. With a graph the returned tensor is
        the graph's output buffer: read it before the next step."""
        if self.length >= self.max_len:
            raise ValueError(
                f"the static cache holds {self.max_len} tokens; all are used: size the decoder for "
                "prompt + new tokens (make_decoder does)"
            )
        self.mask[:, 0, 0, self.length] = True
        self.ids.copy_(ids[:, None])
        self.length += 1
        if not self.use_graph:
            return self._forward()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits

    def _forward(self) -> torch.Tensor:
        return self.lm.decode_step(self.ids, self.mask, self.cache)

    def _capture(self) -> None:
        # Warm up on a side stream (lazy cuBLAS / allocator work must not be captured), then
        # undo the warm-up's cache advance: capture records kernels without running them.
        lengths = [layer.cumulative_length.clone() for layer in self.cache.layers]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        for layer, n in zip(self.cache.layers, lengths, strict=True):
            layer.cumulative_length.copy_(n)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()


def make_decoder(lm: UnifiedLM, batch: int, prompt_len: int, max_new: int, mode: str):
    """The decoder for ``mode`` ("auto": a CUDA graph on a GPU when the LM allows one, else
    dynamic). Static decoders are kept on ``lm`` per (batch, length bucket, weights), so a
    repeated generation of the same shape replays the graph captured the first time."""
    if mode not in KV_CACHE_MODES:
        raise ValueError(f"kv_cache={mode!r}; use one of {KV_CACHE_MODES}")
    on_cuda = next(lm.parameters()).device.type == "cuda"
    if mode == "auto":
        mode = "graph" if on_cuda and lm.takes_decode_mask else "dynamic"
    if mode == "dynamic":
        return DynamicDecoder(lm, max_new)
    # Lengths round up to 64 slots (masked slots cost little), so nearby prompt lengths share.
    # A graph reads the weights at the addresses it was captured with: moving or casting the LM
    # (or replacing a tensor of it) gives new addresses, hence a new key and a fresh capture.
    max_len = -(-(prompt_len + max_new) // 64) * 64
    key = (batch, max_len, mode, tuple(p.data_ptr() for p in lm.parameters()))
    decoders = lm.__dict__.setdefault("_static_decoders", {})
    if key not in decoders:
        if len(decoders) >= MAX_KEPT:  # each holds a KV cache: keep the most recent few
            decoders.pop(next(iter(decoders)))
        decoders[key] = StaticDecoder(lm, batch, max_len, graph=mode == "graph")
    return decoders[key]

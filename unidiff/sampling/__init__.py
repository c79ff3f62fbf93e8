"""Sampling: the visible loop (`loop`: `sample`, the `Sampler` of slots behind it, `GroupSpec`), proposals
(`proposals`), unmasking policies (`policies`), autoregressive decoding (`causal`) and continuous batching
(`stream`)."""

from unidiff.rng import STREAM_POLICY, STREAM_TOKEN, hashed_uniform
from unidiff.sampling.causal import sample_causal
from unidiff.sampling.loop import GroupSpec, SampleOutput, Sampler, sample
from unidiff.sampling.proposals import filter_logits, propose
from unidiff.sampling.stream import sample_stream

__all__ = ["GroupSpec", "STREAM_POLICY", "STREAM_TOKEN", "SampleOutput", "Sampler", "filter_logits",
           "hashed_uniform", "propose", "sample", "sample_causal", "sample_stream"]

"""Pure loss functions: `make_xxx_loss(cfg)` gives `loss_fn(model, batch, rng) -> (loss, metrics)`; the kernels
underneath work on per-token arrays (log-probs, masks, advantages) and can be used without a model."""

from jaxpost.losses.advantages import group_advantages
from jaxpost.losses.compose import Term, compose
from jaxpost.losses.counts import CountedLoss
from jaxpost.losses.dms import DMSLossConfig, make_dms_loss
from jaxpost.losses.grpo import (GRPOConfig, aggregate, kl_penalty, log_importance_ratio, make_grpo_loss, policy_loss,
                                 regularized_loss, rl_batch_counts, rl_counts, token_policy_losses)
from jaxpost.losses.logprobs import (completion_logps, masked_count, masked_mean, masked_sum, rl_model_inputs,
                                     sft_token_arrays, token_entropy, token_logps)
from jaxpost.losses.luffy import LUFFYConfig, luffy_policy_loss, make_luffy_loss
from jaxpost.losses.prefix_rft import (PrefixRFTConfig, build_hybrid_completions, is_prefixed_rollout,
                                       make_prefix_rft_loss, prefix_low, prefix_rft_advantages, prefix_rft_policy_loss,
                                       sample_prefix_lengths, select_high_entropy_prefix_tokens)
from jaxpost.losses.sft import SFTConfig, make_sft_loss, sft_counts, sft_loss_terms

__all__ = [
    "CountedLoss", "DMSLossConfig", "GRPOConfig", "LUFFYConfig", "PrefixRFTConfig", "SFTConfig", "Term", "aggregate",
    "build_hybrid_completions", "completion_logps", "compose", "group_advantages", "is_prefixed_rollout", "kl_penalty",
    "log_importance_ratio", "luffy_policy_loss", "make_dms_loss", "make_grpo_loss", "make_luffy_loss",
    "make_prefix_rft_loss", "make_sft_loss", "masked_count", "masked_mean", "masked_sum", "policy_loss", "prefix_low",
    "prefix_rft_advantages", "prefix_rft_policy_loss", "regularized_loss", "rl_batch_counts", "rl_counts",
    "rl_model_inputs", "sample_prefix_lengths", "select_high_entropy_prefix_tokens", "sft_counts", "sft_loss_terms",
    "sft_token_arrays", "token_entropy", "token_logps", "token_policy_losses",
]

"""Pure loss functions: `make_xxx_loss(cfg)` gives `loss_fn(model, batch, rng) -> (loss, metrics)`; the kernels
underneath work on per-token arrays (log-probs, masks, advantages) and can be used without a model."""

from jaxpost.losses.logprobs import (completion_logps, masked_count, masked_mean, masked_sum, rl_model_inputs,
                                     sft_token_arrays, token_entropy, token_logps)
from jaxpost.losses.sft import SFTConfig, make_sft_loss, sft_loss_terms
from jaxpost.losses.advantages import group_advantages
from jaxpost.losses.grpo import (GRPOConfig, aggregate, kl_penalty, log_importance_ratio, make_grpo_loss, policy_loss,
                                 regularized_loss, token_policy_losses)
from jaxpost.losses.luffy import LUFFYConfig, luffy_policy_loss, make_luffy_loss
from jaxpost.losses.prefix_rft import (PrefixRFTConfig, build_hybrid_completions, make_prefix_rft_loss, prefix_low,
                                       prefix_rft_advantages, prefix_rft_policy_loss, sample_prefix_lengths,
                                       select_high_entropy_prefix_tokens)
from jaxpost.losses.compose import Term, compose

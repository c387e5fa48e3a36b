"""Rewards: answer extraction, exact-match and format rewards, isolated math verification, weighted sums."""

from jaxpost.rewards.extract import extract_answer, extract_arith_answer, extract_boxed
from jaxpost.rewards.functions import (ARITH_FORMAT, BOXED_FORMAT, FormatReward, RewardFn, WeightedReward,
                                       arith_exact_match, make_math_reward, math_verify_score)
from jaxpost.rewards.isolated import IsolatedReward, ItemRewardFn

__all__ = [
    "extract_answer", "extract_arith_answer", "extract_boxed",
    "ARITH_FORMAT", "BOXED_FORMAT", "FormatReward", "RewardFn", "WeightedReward", "arith_exact_match",
    "make_math_reward", "math_verify_score",
    "IsolatedReward", "ItemRewardFn",
]

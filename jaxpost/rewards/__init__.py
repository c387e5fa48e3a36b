"""Rewards: answer extraction, exact-match and format rewards, isolated math verification, weighted sums."""

from jaxpost.rewards.extract import extract_answer, extract_arith_answer, extract_boxed, extract_retrieval_answer
from jaxpost.rewards.functions import (ARITH_FORMAT, BOXED_FORMAT, FormatReward, RewardFn, WeightedReward,
                                       arith_exact_match, make_math_reward, math_verify_score,
                                       retrieval_exact_match, task_scoring)
from jaxpost.rewards.isolated import IsolatedReward, ItemRewardFn

__all__ = [
    "extract_answer", "extract_arith_answer", "extract_boxed", "extract_retrieval_answer",
    "ARITH_FORMAT", "BOXED_FORMAT", "FormatReward", "RewardFn", "WeightedReward", "arith_exact_match",
    "make_math_reward", "math_verify_score", "retrieval_exact_match", "task_scoring",
    "IsolatedReward", "ItemRewardFn",
]

"""Fitting samples into the context and padding them into batches."""

from __future__ import annotations

import torch

from decoder.samples import TokenizedSample, fit_to_context, pad_right


def test_short_sample_is_untouched() -> None:
    fitted = fit_to_context(TokenizedSample("a", [1, 2, 3], [4, 5]), max_length=10)
    assert (fitted.prompt_ids, fitted.completion_ids, fitted.truncated_tokens) == ([1, 2, 3], [4, 5], 0)


def test_completion_tail_is_cut_first() -> None:
    fitted = fit_to_context(TokenizedSample("a", [1, 2, 3], list(range(10, 20))), max_length=8)
    assert fitted.prompt_ids == [1, 2, 3]
    assert fitted.completion_ids == [10, 11, 12, 13, 14]
    assert fitted.truncated_tokens == 5


def test_prompt_that_fills_the_context_keeps_its_end() -> None:
    fitted = fit_to_context(TokenizedSample("a", list(range(20)), [100, 101, 102]), max_length=8)
    assert fitted.prompt_ids == [16, 17, 18, 19]
    assert fitted.completion_ids == [100, 101, 102]
    assert fitted.num_tokens <= 8
    assert fitted.truncated_tokens == 16


def test_pad_right_builds_mask_and_lengths() -> None:
    batch = pad_right([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.prompt_lengths.tolist() == [2, 1]
    assert batch.completion_lengths.tolist() == [1, 3]

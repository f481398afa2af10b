"""Fitting samples into the context and placing them in the rows of a batch."""

from __future__ import annotations

import pytest
import torch

from decoder.batching import PackedLayout
from decoder.samples import TokenizedSample, fit_prompt, fit_to_context, pack_rows, packed_causal_mask


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


def test_one_sequence_per_row_is_right_padded_without_positions() -> None:
    layout = PackedLayout(width=4, num_rows=2, rows=(0, 1), starts=(0, 0))
    batch = pack_rows([([1, 2], [3]), ([4], [5, 6, 7])], layout, pad_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.position_ids is None
    assert batch.prompt_lengths.tolist() == [2, 1]
    assert batch.completion_lengths.tolist() == [1, 3]


def test_packed_sequences_restart_their_positions_and_attend_only_to_themselves() -> None:
    layout = PackedLayout(width=6, num_rows=2, rows=(0, 0, 1), starts=(0, 3, 0))
    batch = pack_rows([([1, 2], [3]), ([4], [5]), ([6], [7, 8, 9])], layout, pad_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert (batch.rows.tolist(), batch.starts.tolist()) == ([0, 0, 1], [0, 3, 0])
    mask = packed_causal_mask(batch.position_ids)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # the padding closing the row attends only to itself
    ]


def test_overlapping_sequences_are_refused() -> None:
    layout = PackedLayout(width=4, num_rows=1, rows=(0, 0), starts=(0, 1))
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([([1], [2]), ([3], [4])], layout, pad_id=0, device=torch.device("cpu"))


def test_fit_prompt_keeps_a_prompt_that_leaves_room_and_caps_generation() -> None:
    fitted = fit_prompt(list(range(6)), context_length=8)
    assert (fitted.prompt_ids, fitted.dropped_tokens, fitted.max_new_tokens) == (list(range(6)), 0, 2)
    assert fit_prompt(list(range(6)), context_length=8, max_new_tokens=1).max_new_tokens == 1
    assert fit_prompt([1, 2], context_length=8, max_new_tokens=50).max_new_tokens == 6


def test_fit_prompt_keeps_the_end_of_a_prompt_that_leaves_no_room() -> None:
    fitted = fit_prompt(list(range(7)), context_length=8)
    assert (fitted.prompt_ids, fitted.dropped_tokens, fitted.max_new_tokens) == ([3, 4, 5, 6], 3, 4)


def test_a_natural_stop_keeps_its_eos_and_the_cap() -> None:
    eos = 9
    fitted = fit_to_context(TokenizedSample("a", [1, 2], [4, 5, eos]), max_length=20, eos_token_id=eos)
    assert fitted.ends_with_eos and fitted.max_new_tokens == 18
    sample = TokenizedSample("a", [1, 2], [4, 5, eos], max_new_tokens=5)
    capped = fit_to_context(sample, max_length=20, eos_token_id=eos)
    assert capped.ends_with_eos and capped.max_new_tokens == 5


def test_a_completion_cut_to_the_room_loses_its_eos() -> None:
    eos = 9
    fitted = fit_to_context(TokenizedSample("a", [1, 2, 3], [4, 5, 6, 7, eos]), max_length=6, eos_token_id=eos)
    assert fitted.completion_ids == [4, 5, 6]
    assert not fitted.ends_with_eos and fitted.max_new_tokens == 3
    assert fitted.truncated_tokens == 2


def test_a_completion_ends_at_its_first_eos_and_without_eos_at_its_length() -> None:
    eos = 9
    fitted = fit_to_context(TokenizedSample("a", [1], [4, eos, 5, eos]), max_length=20, eos_token_id=eos)
    assert fitted.completion_ids == [4, eos] and fitted.ends_with_eos and fitted.truncated_tokens == 2
    cut = fit_to_context(TokenizedSample("a", [1], [4, 5], max_new_tokens=10), max_length=20, eos_token_id=eos)
    assert not cut.ends_with_eos and cut.max_new_tokens == 2


def test_prompt_fitting_does_not_depend_on_the_completion() -> None:
    prompt = list(range(30))
    short = fit_to_context(TokenizedSample("a", prompt, [1]), max_length=16)
    long = fit_to_context(TokenizedSample("a", prompt, list(range(40))), max_length=16)
    assert short.prompt_ids == long.prompt_ids == fit_prompt(prompt, 16).prompt_ids

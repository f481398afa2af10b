"""decoder.exchange: the one rule that turns a logged exchange into token ids."""

from __future__ import annotations

from decoder import TargetModel
from decoder.exchange import Exchange, tokenize_exchange

MESSAGES = [{"role": "user", "content": "How do I reset my password?"}]
TEXT = "Open settings, then choose reset."


def piecewise(target: TargetModel, text: str) -> list[int]:
    """The text as one token per character: ids an engine may emit that re-tokenizing never gives."""
    return [token for character in text for token in target.encode_completion(character, end_with_eos=False)]


def test_without_ids_the_text_is_tokenized_and_a_natural_stop_ends_with_eos(target: TargetModel) -> None:
    tokens = tokenize_exchange(target, Exchange(MESSAGES, TEXT))
    assert tokens.prompt_ids == target.encode_chat(MESSAGES)
    assert tokens.completion_ids == target.encode_completion(TEXT)
    assert (tokens.source, tokens.retokenized_equal, tokens.max_new_tokens) == ("text", None, None)


def test_logged_ids_win_over_the_text_and_the_disagreement_is_recorded(target: TargetModel) -> None:
    prompt = [*target.encode_chat(MESSAGES)[:-1], *piecewise(target, "x")]
    completion = piecewise(target, TEXT)
    assert completion != target.encode_completion(TEXT, end_with_eos=False)
    exchange = Exchange(MESSAGES, TEXT, max_tokens=64, prompt_token_ids=prompt, completion_token_ids=completion)
    tokens = tokenize_exchange(target, exchange)
    assert tokens.prompt_ids == prompt
    assert tokens.completion_ids == [*completion, target.eos_token_id]
    assert (tokens.source, tokens.retokenized_equal, tokens.max_new_tokens) == ("ids", False, 64)
    assert tokens.sequence == prompt + tokens.completion_ids


def test_ids_equal_to_the_retokenized_text_are_recorded_as_equal(target: TargetModel) -> None:
    completion = [*target.encode_completion(TEXT, end_with_eos=False), target.eos_token_id]
    exchange = Exchange(MESSAGES, TEXT, completion_token_ids=completion)
    tokens = tokenize_exchange(target, exchange)
    assert tokens.completion_ids == completion  # the logged EOS is not doubled
    assert (tokens.source, tokens.retokenized_equal) == ("completion_ids", True)
    assert tokens.prompt_ids == target.encode_chat(MESSAGES)
    with_prompt = Exchange(
        MESSAGES, TEXT, prompt_token_ids=[1, *target.encode_chat(MESSAGES)], completion_token_ids=completion
    )
    assert tokenize_exchange(target, with_prompt).retokenized_equal is False  # the prompt differs


def test_a_cut_completion_keeps_its_ids_without_eos_and_its_length_as_cap(target: TargetModel) -> None:
    completion = piecewise(target, TEXT)[:5]
    exchange = Exchange(MESSAGES, TEXT[:5], finish_reason="length", max_tokens=5, completion_token_ids=completion)
    tokens = tokenize_exchange(target, exchange)
    assert (tokens.completion_ids, tokens.max_new_tokens) == (completion, 5)


def test_ids_outside_the_vocabulary_are_not_this_targets_tokens(target: TargetModel) -> None:
    foreign = Exchange(
        MESSAGES, TEXT, prompt_token_ids=[target.vocab_size], completion_token_ids=[target.vocab_size + 7]
    )
    tokens = tokenize_exchange(target, foreign)
    assert tokens.source == "text"
    assert tokens.prompt_ids == target.encode_chat(MESSAGES)
    assert tokens.completion_ids == target.encode_completion(TEXT)


def test_a_raw_prompt_without_ids_gets_no_chat_template(target: TargetModel) -> None:
    raw = Exchange([{"role": "user", "content": "def add(a, b):"}], " return a + b", raw_prompt=True)
    assert tokenize_exchange(target, raw).prompt_ids == target.encode_prompt("def add(a, b):")

"""The engine on tiny random models: reproducibility, no side effects, and clear refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import BertConfig, BertLMHeadModel

from factstore.domain import EditRequest
from factstore.errors import InvalidEditRequest, UnknownArchitecture
from factstore.rome.edit import compute_edit, contexts_for, validate_request
from factstore.rome.hparams import ROMEHyperParams
from factstore.rome.keys import compute_key
from factstore.rome.prompts import encode_prompt
from factstore.rome.values import compute_value
from tiny_models import random_gpt2, random_llama

REQUEST = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
HP = ROMEHyperParams(layer=1, steps=4, context_lengths=((3, 4),), value_context_lengths=((3, 2),))


@pytest.mark.parametrize("make", [random_gpt2, random_llama], ids=["gpt2", "llama"])
def test_same_request_and_seed_give_the_same_key_and_value(make, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = make(seed=0)
    first = contexts_for(model, gpt2_tokenizer, HP)
    second = contexts_for(model, gpt2_tokenizer, HP)
    assert first == second and len(first.key) == 5 and first.key[0] == "{}"
    assert contexts_for(model, gpt2_tokenizer, ROMEHyperParams(**{**HP.__dict__, "context_seed": 1})) != first
    k1 = compute_key(model, gpt2_tokenizer, REQUEST, 1, first.key)
    k2 = compute_key(model, gpt2_tokenizer, REQUEST, 1, second.key)
    assert torch.equal(k1, k2)
    v1 = compute_value(model, gpt2_tokenizer, REQUEST, first.value, HP).value
    v2 = compute_value(model, gpt2_tokenizer, REQUEST, second.value, HP).value
    assert torch.equal(v1, v2)


def test_compute_edit_leaves_the_model_unchanged(gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = random_gpt2(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d_ff = model.config.n_embd * 4
    result = compute_edit(model, gpt2_tokenizer, REQUEST, HP, torch.eye(d_ff))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert result.key.shape == (d_ff,) and result.value.shape == (model.config.n_embd,)
    assert result.module == "transformer.h.1.mlp.c_proj"


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        (dict(prompt="is located in the city of", subject="X", target_new="Rome"), "exactly once"),
        (dict(prompt="{} and {} are in", subject="X", target_new="Rome"), "exactly once"),
        (dict(prompt="{} is in", subject="  ", target_new="Rome"), "subject is empty"),
        (dict(prompt="{} is in", subject="X", target_new=" "), "target is empty"),
    ],
)
def test_malformed_requests_are_refused(request_kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidEditRequest, match=message):
        EditRequest(**request_kwargs)


def test_requests_the_model_cannot_carry_are_refused(gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = random_gpt2(seed=0)  # 3 layers, 128 positions
    with pytest.raises(InvalidEditRequest, match="outside the model"):
        validate_request(model, gpt2_tokenizer, REQUEST, 7)
    with pytest.raises(InvalidEditRequest, match="token boundary"):
        validate_request(model, gpt2_tokenizer, EditRequest("{}on is a city in", "The city of Lond", "England"), 1)
    # a token that runs on into punctuation only (GPT-2 merges "),") still ends the subject (CounterFact has such records)
    found = encode_prompt(gpt2_tokenizer, "{}, who plays the position", "Brandon Jenkins (football player)")
    assert gpt2_tokenizer.decode(found.ids[found.subject_last]) == "),"
    with pytest.raises(InvalidEditRequest, match="longer than the model's context"):
        validate_request(model, gpt2_tokenizer, EditRequest("{} is" + " very" * 200 + " far from", "Paris", "Rome"), 1)


def test_unknown_architecture_lists_the_supported_ones(gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = BertLMHeadModel(
        BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, is_decoder=True)
    )
    with pytest.raises(UnknownArchitecture, match=r"gpt2.*llama"):
        validate_request(model, gpt2_tokenizer, REQUEST, 0)


def _city_requests(n: int) -> list[EditRequest]:
    from tiny_models import RELATIONS, Recipe, make_facts

    facts = [f for f in make_facts(Recipe()) if f.relation == "city"][:n]
    return [
        EditRequest(RELATIONS["city"][0][0], f.subject, "Tokyo" if f.target.strip() != "Tokyo" else "Paris")
        for f in facts
    ]


@pytest.mark.parametrize("make", [random_gpt2, random_llama], ids=["gpt2", "llama"])
def test_running_only_what_delta_changes_gives_the_same_value(make, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = make(seed=0)
    templates = ["{}", "Hello there. {}", "The weather is fine today. {}"]
    for request in (REQUEST, EditRequest("The mother tongue of {} is", "Vladimir Putin", "French Canadian")):
        whole = compute_value(model, gpt2_tokenizer, request, templates, HP, loop="whole")
        for loop in ("upper", "suffix"):
            fast = compute_value(model, gpt2_tokenizer, request, templates, HP, loop=loop)
            assert torch.allclose(whole.value, fast.value, atol=1e-5, rtol=0) and whole.steps == fast.steps == HP.steps


def test_the_suffix_loop_falls_back_once_for_a_family_without_a_cache_keyword_and_lets_bugs_through(
    gpt2_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from factstore.rome import values

    model = random_llama(seed=0)
    templates = ["{}", "Hello there. {}"]
    upper = compute_value(model, gpt2_tokenizer, REQUEST, templates, HP, loop="upper")
    forward = model.base_model.forward

    def no_position_ids(*args, **kwargs):  # type: ignore[no-untyped-def]
        if "position_ids" in kwargs:  # as a family whose forward takes no position ids would say
            raise TypeError("forward() got an unexpected keyword argument 'position_ids'")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.base_model, "forward", no_position_ids)
    monkeypatch.setattr(values, "_said", set())
    logged: list[str] = []  # what the module logs, whatever another test did to logging's configuration
    monkeypatch.setattr(values.log, "info", lambda message, *args: logged.append(message % args))
    for _ in range(2):
        fast = compute_value(model, gpt2_tokenizer, REQUEST, templates, HP, loop="suffix")
        assert torch.allclose(fast.value, upper.value, atol=1e-5, rtol=0)
    said = [m for m in logged if "suffix loop off" in m]
    assert len(said) == 1 and "LlamaForCausalLM" in said[0] and "position_ids" in said[0]

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise IndexError("a bug in the fast path")

    monkeypatch.setattr(model.base_model, "forward", broken)
    with pytest.raises(IndexError, match="a bug in the fast path"):
        compute_value(model, gpt2_tokenizer, REQUEST, templates, HP, loop="suffix")


def _batch_pool() -> list[EditRequest]:
    """Requests that leave a batch at different steps: two the model already answers (they stop at
    once), seven swapped cities, one target no 15 steps reach."""
    from tiny_models import RELATIONS, Recipe, make_facts

    facts = [f for f in make_facts(Recipe()) if f.relation == "city"][:10]
    prompt = RELATIONS["city"][0][0]
    return (
        [EditRequest(prompt, f.subject, f.target) for f in facts[:2]]
        + _city_requests(10)[2:9]
        + [EditRequest(prompt, facts[9].subject, "Ouagadougou and the Burkina Faso plateau")]
    )


# The model in float64: a batch is the same arithmetic as one request alone, summed in another
# order. With a float32 model Adam turns that rounding (1e-7) into steps of the learning rate where a
# gradient is near zero, so batched and single v* differ by ~1e-3 there. A float64 model's passes
# agree to ~1e-16, so the float32 values the optimisation keeps (v0, delta, log-probabilities)
# come out the same to the last bit.
def test_a_batch_gives_each_request_its_own_result(tiny_gpt2_dir, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Requests leave the batch at different steps (early stop); each v* equals its run alone."""
    from transformers import AutoModelForCausalLM

    from factstore.rome.values import compute_values

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float64).eval()
    requests = _batch_pool()
    hp = ROMEHyperParams(layer=2, steps=15, early_stop_loss=0.5, context_lengths=(), value_context_lengths=())
    alone = [compute_value(model, gpt2_tokenizer, r, ["{}"], hp) for r in requests]
    together = compute_values(model, gpt2_tokenizer, requests, ["{}"], hp)
    assert len({a.steps for a in alone}) >= 3  # the batch shrinks several times
    for a, b in zip(alone, together):
        assert a.steps == b.steps and abs(a.loss - b.loss) < 1e-9
        assert torch.allclose(a.value, b.value, rtol=1e-9, atol=1e-9) and torch.allclose(
            a.v0, b.v0, rtol=1e-12, atol=1e-12
        )


def test_a_batch_of_edits_scores_each_request_alone(tiny_gpt2_dir, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    from factstore.rome.edit import compute_edits

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float64).eval()
    requests = _city_requests(3)
    hp = ROMEHyperParams(layer=2, context_lengths=(), value_context_lengths=())
    C = torch.eye(model.config.n_embd * 4, dtype=torch.float64)
    together = compute_edits(model, gpt2_tokenizer, requests, hp, C)
    for request, batched in zip(requests, together):
        single = compute_edit(model, gpt2_tokenizer, request, hp, C)
        assert single.target_true == batched.target_true
        assert (
            abs(single.prob_new_after - batched.prob_new_after) < 1e-9
            and batched.prob_new_after > batched.prob_new_before
        )
        assert torch.allclose(single.key, batched.key, rtol=1e-12, atol=1e-12)
        assert torch.allclose(single.value, batched.value, rtol=1e-9, atol=1e-9)


def test_mpes_stops_each_request_once_its_target_leads(tiny_gpt2_dir, gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """With top1_patience, a request leaves the optimisation PATIENCE steps after its target became
    top-1 on every rewrite prompt: never later than the loss-based stop, earlier for most, its v*
    no farther from v0, and the target still top-1 with that v*; in a batch as alone."""
    from transformers import AutoModelForCausalLM

    from factstore.rome.values import compute_values

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float64).eval()
    requests = _city_requests(8)
    base = ROMEHyperParams(layer=2, steps=25, early_stop_loss=0.01, context_lengths=(), value_context_lengths=())
    full = compute_values(model, gpt2_tokenizer, requests, ["{}"], base)
    mpes = compute_values(model, gpt2_tokenizer, requests, ["{}"], replace(base, top1_patience=1))
    assert all(m.steps <= f.steps for m, f in zip(mpes, full))
    assert sum(m.steps < f.steps for m, f in zip(mpes, full)) >= len(requests) // 2
    shorter = [(m, f) for m, f in zip(mpes, full) if m.steps < f.steps]
    norms = [(float((m.value - m.v0).norm()), float((f.value - f.v0).norm())) for m, f in shorter]
    assert all(a <= b * (1 + 1e-6) for a, b in norms)  # equal (to float32 rounding) where both sit on the clamp's ball
    assert sum(a < 0.8 * b for a, b in norms) >= 2
    for request, result in zip(requests, mpes):
        if result.steps < base.steps:
            alone = compute_values(model, gpt2_tokenizer, [request], ["{}"], replace(base, top1_patience=1))[0]
            assert alone.steps == result.steps and torch.allclose(alone.value, result.value, atol=1e-9)
            assert _target_leads(model, gpt2_tokenizer, request, result.value - result.v0)


def _target_leads(model, tokenizer, request: EditRequest, delta: torch.Tensor) -> bool:  # type: ignore[no-untyped-def]
    """The first target token is the argmax after the prompt, delta added to layer 2's MLP output
    at the subject's last token."""
    from factstore import arch
    from factstore.rome.hooks import add_per_row, edit_output

    enc = encode_prompt(tokenizer, request.prompt, request.subject)
    first = tokenizer(" " + request.target_new.strip())["input_ids"][0]
    ids = torch.tensor([enc.ids])
    editor = add_per_row(delta.unsqueeze(0).to(torch.float64), torch.tensor([0]), torch.tensor([enc.subject_last]))
    with torch.no_grad(), edit_output(arch.down_proj(model, 2), editor):
        logits = model(input_ids=ids).logits[0, -1]
    return int(logits.argmax()) == first


def test_the_loop_choice_follows_the_device_and_the_batch() -> None:
    """On the CPU the suffix loop always; on an accelerator the upper loop for one request (the
    suffix loop's many small launches were slower there) and the suffix loop for a batch."""
    from factstore.rome.values import choose_loop

    assert choose_loop(torch.device("cpu"), 1) == choose_loop(torch.device("cpu"), 16) == "suffix"
    assert choose_loop(torch.device("cuda", 0), 1) == "upper"
    assert choose_loop(torch.device("cuda", 0), 8) == "suffix"


@pytest.mark.parametrize("make", [random_gpt2, random_llama])
def test_context_templates_sampled_with_the_cache_are_those_of_the_full_forward(make) -> None:  # type: ignore[no-untyped-def]
    """keys._sample feeds one new token a step against the key/value cache: the same tokens as a
    full forward pass over the whole prefix at every step (a cache the model ignored would not)."""
    from factstore.rome import keys

    model = make(seed=3)
    start = torch.tensor([[464, 318]] * 3)
    with torch.no_grad():
        got = keys._sample(model, start, 6, torch.Generator().manual_seed(5))
        gen, want = torch.Generator().manual_seed(5), start
        for _ in range(6):
            top = model(input_ids=want).logits[:, -1].float().topk(keys._TOP_K, dim=-1)
            pick = top.indices.gather(1, torch.multinomial(top.values.softmax(-1), 1, generator=gen))
            want = torch.cat([want, pick], dim=1)
    assert got.shape == (3, 8) and torch.equal(got, want)


def test_the_suffix_loop_falls_back_for_a_batch_longer_than_a_sliding_window(gpt2_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from tiny_models import random_decoder

    model = random_decoder("mistral", seed=0)  # sliding_window 64
    long_prefix = "A rather long preamble that goes on and on about nothing in particular. " * 6 + "{}"
    templates = ["{}", long_prefix]
    upper = compute_value(model, gpt2_tokenizer, REQUEST, templates, HP, loop="upper")
    fast = compute_value(model, gpt2_tokenizer, REQUEST, templates, HP, loop="suffix")
    assert torch.allclose(fast.value, upper.value, atol=1e-5, rtol=0)

"""Algorithm 2 on hand-written timelines."""

import pytest

from soundflow.tokens import AUDIO_SLOTS, MASK, ByteTokenizer, build_sequence, labels_to_timeline, parse_timeline

TOK = ByteTokenizer()
S, R, E, A = TOK.silent_id, TOK.response_id, TOK.eos_id, TOK.audio_id


def chunk(ctrl, reply=""):
    return [A] * AUDIO_SLOTS + [ctrl] + ([*reply.encode(), E] if ctrl == R else [])


def test_layout_and_labels_by_hand():
    seq = build_sequence(TOK, 3, [{"chunk": 1, "text": "hi"}], instruction="go")
    expected = [*b"go"] + chunk(S) + chunk(R, "hi") + chunk(S)
    assert seq.input_ids == expected
    # instruction and audio positions are masked from both label streams
    for j, tok in enumerate(seq.input_ids):
        if j < 2 or tok == A:
            assert seq.y_stream[j] == MASK and seq.y_lm[j] == MASK
    ctrl = [j for j, t in enumerate(seq.input_ids) if t in (S, R)]
    assert [seq.y_stream[j] for j in ctrl] == [S, R, S]
    assert all(seq.y_lm[j] == MASK for j in ctrl)
    # reply tokens and their <eos> supervised by y_LM only
    r = ctrl[1]
    assert seq.y_lm[r + 1 : r + 4] == [ord("h"), ord("i"), E]
    assert seq.y_stream[r + 1 : r + 4] == [MASK] * 3
    assert seq.audio_mask.count(True) == 3 * AUDIO_SLOTS
    assert seq.n_audio_chunks == 3


@pytest.mark.parametrize("timeline", [
    [(0, "first")],                                    # reply at the first chunk
    [(4, "last")],                                     # reply at the last chunk
    [(1, "a"), (2, "b"), (3, "c")],                    # back-to-back replies
    [(0, "q1"), (2, "a1"), (3, "q2"), (4, "a2")],      # stage-4 style interleaving
    [],                                                # all silent
])
def test_inverse_roundtrip(timeline):
    seq = build_sequence(TOK, 5, timeline)
    want = [{"chunk": k, "text": t} for k, t in timeline]
    assert labels_to_timeline(TOK, seq) == want
    assert parse_timeline(TOK, seq.input_ids, seq.audio_mask) == want
    assert sum(1 for y in seq.y_stream if y != MASK) == 5  # one control token per chunk


def test_audio_instruction_prefix_is_masked():
    seq = build_sequence(TOK, 2, [(1, "x")], instruction_chunks=2)
    assert seq.input_ids[: 2 * AUDIO_SLOTS] == [A] * (2 * AUDIO_SLOTS)
    assert seq.n_audio_chunks == 4
    assert parse_timeline(TOK, seq.input_ids, seq.audio_mask) == [{"chunk": 1, "text": "x"}]


def test_timeline_errors():
    with pytest.raises(ValueError, match="outside"):
        build_sequence(TOK, 3, [(3, "late")])
    with pytest.raises(ValueError, match="two replies"):
        build_sequence(TOK, 3, [(1, "a"), (1, "b")])


def test_parse_cut_reply_and_model_output():
    # a decoder's emitted stream: no audio ids, a reply cut before <eos>
    ids = [S, R, *b"ok", E, S, R, *b"cu"]
    assert parse_timeline(TOK, ids) == [{"chunk": 1, "text": "ok"}, {"chunk": 3, "text": "cu"}]


def test_hf_tokenizer_adds_real_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from soundflow.tokens import SPECIAL_TOKENS, HFTokenizer

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "<": 3, ">": 4, "silent": 5}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]"))
    ids = [tok.silent_id, tok.response_id, tok.eos_id, tok.audio_id]
    assert min(ids) >= len(vocab) and len(set(ids)) == 4  # new ids, not reused text ids
    assert tok.vocab_size == len(vocab) + len(SPECIAL_TOKENS)
    assert tok.encode("<silent>") == [tok.silent_id]


def test_reply_windows_mark_their_control_positions():
    from soundflow.tokens import NO_WINDOW, reply_windows

    tl = [{"chunk": 1, "text": "a"}, {"chunk": 5, "text": "b", "from": 1}, {"chunk": 7, "text": "c", "from": 6}]
    assert reply_windows(tl, 8) == {2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1}  # chunk 1 stays reply "a"'s own
    seq = build_sequence(TOK, 8, tl, audio_slots=2)
    ctrl = [j for j, y in enumerate(seq.y_stream) if y != MASK]
    assert [seq.y_window[j] for j in ctrl] == [NO_WINDOW, NO_WINDOW, 0, 0, 0, 0, 1, 1]
    assert all(w == NO_WINDOW for j, w in enumerate(seq.y_window) if j not in ctrl)
    with pytest.raises(ValueError, match="window"):
        reply_windows([{"chunk": 2, "text": "x", "from": 3}], 8)

"""`unime models build-tiny --tokenizer-corpus FILE` / `--tokenizer DIR`: a tiny model whose tokenizer knows
the user's words, or uses an existing tokenizer."""

from __future__ import annotations

from unime.cli import main

CAPTIONS = ["a bowl of lettuce and tomatoes", "fresh lettuce on a wooden board", "sliced cucumber with lettuce",
            "a plate of roasted aubergine", "aubergine and courgette on the grill"]


def test_the_corpus_makes_the_users_words_whole_tokens(tmp_path, capsys):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS * 30) + "\n")
    assert main(["models", "build-tiny", "--out", str(tmp_path / "plain")]) == 0
    assert main(["models", "build-tiny", "--out", str(tmp_path / "own"), "--tokenizer-corpus", str(corpus)]) == 0
    plain = AutoTokenizer.from_pretrained(tmp_path / "plain")
    own = AutoTokenizer.from_pretrained(tmp_path / "own")
    for word in (" lettuce", " aubergine"):
        assert len(own.encode(word, add_special_tokens=False)) == 1
        assert len(plain.encode(word, add_special_tokens=False)) > 2
    caption = CAPTIONS[1]
    assert len(own.encode(caption, add_special_tokens=False)) < len(plain.encode(caption, add_special_tokens=False))
    # unime's own needs still hold: Yes / No single tokens, the Qwen special tokens
    assert len(own.encode("Yes", add_special_tokens=False)) == 1
    assert own.convert_tokens_to_ids("<|image_pad|>") != own.unk_token_id

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    capsys.readouterr()
    assert main(["models", "build-tiny", "--out", str(tmp_path / "x"), "--tokenizer-corpus", str(empty)]) == 2
    assert "tokenizer corpus is empty" in capsys.readouterr().err


def test_an_existing_tokenizer_folder(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS * 30) + "\n")
    assert main(["models", "build-tiny", "--out", str(tmp_path / "src"), "--tokenizer-corpus", str(corpus)]) == 0
    assert main(["models", "build-tiny", "--family", "qwen2_5_vl", "--out", str(tmp_path / "reuse"),
                 "--tokenizer", str(tmp_path / "src")]) == 0
    a = AutoTokenizer.from_pretrained(tmp_path / "src")
    b = AutoTokenizer.from_pretrained(tmp_path / "reuse")
    assert a.get_vocab() == b.get_vocab()
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "reuse")
    assert model.config.text_config.vocab_size == len(b)

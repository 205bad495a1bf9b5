"""Out-of-domain contamination (audio_interpretability.data.ood): both protocols' formulas,
the published contamination dataset, LJSpeech loading, and the speech-like stand-in."""

import csv
import random

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.seed import seed_everything

from audio_interpretability.data.esc50 import peak_normalize
from audio_interpretability.data.ood import (
    CONTAMINATION_DRAWS,
    ContaminatedDataset,
    LJSpeechClips,
    OverlapDataset,
    check_eval_protocol,
    check_overlap_type,
    generate_speech_like,
    item_generator,
    ljspeech_files,
    overlap,
    overlap_types,
    published_draws,
    published_mixture,
    resolve_ljspeech,
)


# --------------------------------------------------------------------------------------------
# The published formulas, re-written as in SpeechBrain's recipes/ESC50/interpret/eval.py
# --------------------------------------------------------------------------------------------
def published_sample_indices(seed, n_clips, pool_size, multiplier):
    """The pool indices of a sequential published run: ``random.seed(10)`` at the import of
    eval.py, then the YAML's ``__set_seed`` (``seed_everything(seed)``), then, clip after clip,
    ``pool = [i for i in range(len(self.cont_d))]``, ``random.sample(pool, overlap_multiplier)``
    (python's global ``random``; its state is restored afterwards)."""
    state, torch_state = random.getstate(), torch.get_rng_state()
    try:
        random.seed(10)
        seed_everything(seed, verbose=False)
        indices = []
        for _ in range(n_clips):
            pool = [i for i in range(pool_size)]
            indices.append(random.sample(pool, multiplier))
        return indices
    finally:
        random.setstate(state)
        torch.set_rng_state(torch_state)


def published_white_noise(seed, lengths, multiplier):
    """``torch.randn(sample["sig"].shape)`` per version, clip after clip, from torch's global RNG
    right after its seeding (the published run also draws model initialisations in between,
    which is why its values are not reproduced). (clips, multiplier, T)."""
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        return [[torch.randn(length) for _ in range(multiplier)] for length in lengths]
    finally:
        torch.set_rng_state(state)


def expected_indices(draws, seed, n_clips, pool_size, multiplier):
    """Pool indices of each clip under ``draws``."""
    if draws == "published":
        return published_sample_indices(seed, n_clips, pool_size, multiplier)
    return [
        torch.randperm(pool_size, generator=item_generator(seed, clip))[:multiplier].tolist()
        for clip in range(n_clips)
    ]


def generate_mixture(s1, s2):
    """ESCContaminated.generate_mixture (mixtures and LJSpeech)."""
    s1 = s1 / torch.norm(s1)
    s2 = s2 / torch.norm(s2)
    mix = s1 * 0.8 + (s2 * 0.2)
    mix = mix / mix.max()
    return mix


def white_noise_mixture(sig, noise):
    """ESCContaminated.__getitem__, overlap_type white_noise (noise = torch.randn there)."""
    smp = sig / sig.pow(2).sum().sqrt()
    noise = noise / noise.pow(2).sum().sqrt()
    out = smp + 0.5 * noise
    return out / out.max()


def fixed_signals(n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=gen) * 0.3
    s = s / s.max()  # as the published dataio_prep: sig / sig.max()
    return s, torch.randn(n, generator=gen) * 2.0


def test_published_mixture_is_generate_mixture():
    s, n = fixed_signals()
    mix, gain, n_part = published_mixture(s, n, 0.8, 0.2, return_parts=True)
    assert torch.allclose(mix, generate_mixture(s, n), atol=1e-6)
    assert torch.allclose(mix, gain * s + n_part, atol=1e-6)
    assert float(mix.max()) == pytest.approx(1.0)
    # Invariant to a positive scale of either input: our abs-peak-normalised clips give the
    # same mixtures as the published max-normalised ones.
    assert torch.allclose(published_mixture(3 * s, 0.1 * n), mix, atol=1e-6)
    # Batched (..., T) equals per item.
    batch = published_mixture(torch.stack((s, n)), torch.stack((n, s)))
    assert torch.allclose(batch[1], generate_mixture(n, s), atol=1e-6)


def test_published_white_noise_formula():
    s, noise = fixed_signals(seed=1)
    mix = published_mixture(s, noise, 1.0, 0.5)
    assert torch.allclose(mix, white_noise_mixture(s, noise), atol=1e-6)


def test_published_mixture_divides_by_max_not_abs_max():
    s = torch.tensor([1.0, 0.0, -4.0])  # ||s|| = sqrt(17)
    n = torch.tensor([0.0, 1.0, 0.0])
    mix = published_mixture(s, n)
    assert torch.allclose(mix, generate_mixture(s, n))
    assert float(mix.max()) == pytest.approx(1.0) and float(mix.min()) < -1.0
    hand = torch.tensor([0.8 / 17**0.5, 0.2, -3.2 / 17**0.5]) / 0.2
    assert torch.allclose(mix, hand, atol=1e-6)


def test_published_mixture_degenerate_inputs_stay_finite():
    s = torch.tensor([0.0, 2.0, -1.0])
    # A silent contamination adds nothing (published: NaN).
    assert torch.allclose(published_mixture(s, torch.zeros(3)), s / 2)
    assert torch.allclose(published_mixture(torch.zeros(3), s), s / 2)
    assert torch.equal(published_mixture(torch.zeros(3), torch.zeros(3)), torch.zeros(3))
    # A mixture with no positive sample is divided by its absolute peak (published: sign flip).
    neg = published_mixture(torch.tensor([-1.0, -2.0]), torch.tensor([0.0, -1.0]))
    assert float(neg.min()) == pytest.approx(-1.0) and float(neg.max()) < 0
    with pytest.raises(ValueError, match="fit_length"):
        published_mixture(s, s[:2])


def test_our_overlap_formula_hand_computed():
    s = torch.tensor([0.0, 2.0, -1.0, 0.5])
    n = torch.tensor([4.0, 0.0, -4.0, 2.0])
    mix, gain, n_part = overlap(s, n, 0.8, 0.2, return_parts=True)
    raw = torch.tensor([0.2, 0.8, -0.6, 0.3])  # 0.8 * s / 2 + 0.2 * n / 4
    assert torch.allclose(mix, raw / 0.8)
    assert torch.allclose(mix, gain * s + n_part)
    # A silent interfering signal adds nothing; a silent clip leaves only the interference.
    assert torch.allclose(overlap(s, torch.zeros(4), 0.8, 0.2), s / 2)
    assert torch.allclose(overlap(torch.zeros(4), n, 1.0, 0.5), n / 4)
    with pytest.raises(ValueError, match="fit_length"):
        overlap(s, n[:3], 0.8, 0.2)


def test_names():
    assert check_overlap_type("LJSpeech") == check_overlap_type("speech") == "LJSpeech"
    assert check_overlap_type("ljspeech") == "LJSpeech"
    assert overlap_types("all") == ["mixtures", "LJSpeech", "white_noise"]
    assert overlap_types("none") == overlap_types(None) == []
    with pytest.raises(ValueError, match="unknown overlap_type"):
        overlap_types("reverb")
    assert check_eval_protocol("ours") == "ours"
    with pytest.raises(ValueError, match="unknown eval_protocol"):
        check_eval_protocol("paper")


# --------------------------------------------------------------------------------------------
# The published contamination dataset
# --------------------------------------------------------------------------------------------
class Toy(torch.utils.data.Dataset):
    """Clips with stems (event + background = sig); ``offset`` makes each set's clips unique."""

    def __init__(self, n_clips, offset=0, length=300, labels=None):
        gen = torch.Generator().manual_seed(100 + offset)
        self.items = []
        for i in range(n_clips):
            event = torch.randn(length, generator=gen) * (i + 1)
            background = 0.1 * torch.randn(length, generator=gen)
            sig = event + background
            scale = 1 / sig.abs().max()
            self.items.append(
                {
                    "id": f"clip{offset + i}",
                    "sig": sig * scale,
                    "event_sig": event * scale,
                    "background_sig": background * scale,
                    "class_string": labels[i] if labels else str(i),
                }
            )
        self.data_ids = [it["id"] for it in self.items]
        self.data = {it["id"]: {"class_string": it["class_string"]} for it in self.items}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


def assert_stems_exact(item, original):
    """event + background == sig, and the event is the original event times one factor."""
    assert torch.allclose(item["event_sig"] + item["background_sig"], item["sig"], atol=1e-5)
    ratio = item["event_sig"] / original["event_sig"]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


@pytest.mark.parametrize("draws", CONTAMINATION_DRAWS)
def test_mixtures_use_the_pool_two_distinct_clips_per_clip(draws):
    valid, test = Toy(3), Toy(5, offset=10)
    data = ContaminatedDataset(
        valid, "mixtures", contamination=test, multiplier=2, seed=7, draws=draws
    )
    assert len(data) == 6
    assert [data[i]["id"] for i in range(4)] == ["clip0_ov0", "clip0_ov1", "clip1_ov0", "clip1_ov1"]
    for clip, drawn in enumerate(expected_indices(draws, 7, 3, 5, 2)):
        assert drawn[0] != drawn[1]
        for version in range(2):
            item = data[2 * clip + version]
            expected = generate_mixture(valid[clip]["sig"], test[drawn[version]]["sig"])
            assert torch.allclose(item["sig"], expected, atol=1e-6)
            assert_stems_exact(item, valid[clip])
            assert item["class_string"] == valid[clip]["class_string"]
    # Only clips of the pool contaminate: no mixture is explained by a validation clip.
    for other in range(3):
        for clip in range(3):
            mix = generate_mixture(valid[clip]["sig"], valid[other]["sig"])
            assert not any(torch.allclose(data[2 * clip + v]["sig"], mix) for v in range(2))


def test_white_noise_is_seeded_per_clip_and_independent_of_order():
    valid = Toy(3)
    data = ContaminatedDataset(valid, "white_noise", multiplier=2, seed=3, draws="per_clip")
    item = data[3]  # clip 1, version 1
    noise = torch.randn(2, 300, generator=item_generator(3, 1))[1]
    assert torch.allclose(item["sig"], white_noise_mixture(valid[1]["sig"], noise), atol=1e-6)
    assert_stems_exact(item, valid[1])
    assert not torch.allclose(data[2]["sig"], item["sig"])  # the two versions differ
    forward = [data[i]["sig"] for i in range(len(data))]
    backward = [data[i]["sig"] for i in reversed(range(len(data)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    # Any batch size gives the same items.
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=PaddedBatch)
    batched = torch.cat([batch.sig.data for batch in loader])  # (6, T)
    assert torch.equal(batched, torch.stack(forward))
    assert ContaminatedDataset(valid, "white_noise", multiplier=1)[1]["id"] == "clip1_ov0"


def test_published_draws_transcribe_the_published_sequential_read():
    # 40 validation clips, a pool of 12 test clips, 2 versions, the YAML's seed.
    assert published_draws(40, 12, 2, seed=1234) == published_sample_indices(1234, 40, 12, 2)
    assert published_draws(5, 10000, 2, seed=0) == published_sample_indices(0, 5, 10000, 2)
    # The import-time random.seed(10) is overridden by the YAML's seed_everything(seed).
    assert published_draws(40, 12, 2, seed=1234) != published_draws(40, 12, 2, seed=10)


def test_published_draws_do_not_depend_on_read_order_or_batch_size():
    valid, test = Toy(6), Toy(9, offset=10)
    data = ContaminatedDataset(valid, "mixtures", contamination=test, multiplier=2, seed=1234)
    drawn = published_sample_indices(1234, 6, 9, 2)
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    shuffled = {i: data[i]["sig"] for i in order}
    for clip in range(6):
        for version in range(2):
            expected = generate_mixture(valid[clip]["sig"], test[drawn[clip][version]]["sig"])
            assert torch.allclose(shuffled[2 * clip + version], expected, atol=1e-6)
    loader = torch.utils.data.DataLoader(data, batch_size=5, collate_fn=PaddedBatch)
    batched = torch.cat([batch.sig.data for batch in loader])  # (12, T)
    assert torch.equal(batched, torch.stack([shuffled[i] for i in range(len(data))]))


def test_published_white_noise_is_one_generator_in_clip_order_read_in_any_order():
    valid = Toy(4)
    lengths = [len(valid[i]["sig"]) for i in range(4)]
    data = ContaminatedDataset(valid, "white_noise", multiplier=2, seed=3)
    noises = published_white_noise(3, lengths, 2)
    backward = {i: data[i]["sig"] for i in reversed(range(len(data)))}
    for clip in range(4):
        for version in range(2):
            expected = white_noise_mixture(valid[clip]["sig"], noises[clip][version])
            assert torch.allclose(backward[2 * clip + version], expected, atol=1e-6)
            assert_stems_exact(data[2 * clip + version], valid[clip])
    assert not torch.allclose(backward[0], backward[1])  # the two versions differ
    loader = torch.utils.data.DataLoader(data, batch_size=3, collate_fn=PaddedBatch)
    batched = torch.cat([batch.sig.data for batch in loader])  # (8, T)
    assert torch.equal(batched, torch.stack([backward[i] for i in range(len(data))]))
    # The global RNG is not touched.
    state = torch.get_rng_state()
    ContaminatedDataset(valid, "white_noise", multiplier=2, seed=3)[5]
    assert torch.equal(torch.get_rng_state(), state)


def test_contamination_errors():
    with pytest.raises(ValueError, match="smaller --overlap_multiplier"):
        ContaminatedDataset(Toy(2), "mixtures", contamination=Toy(1, offset=5), multiplier=2)
    with pytest.raises(ValueError, match="mixtures needs"):
        ContaminatedDataset(Toy(2), "mixtures")
    with pytest.raises(ValueError, match="LJSpeechClips"):
        ContaminatedDataset(Toy(2), "speech", contamination=Toy(2))
    with pytest.raises(ValueError, match="overlap_multiplier must be"):
        ContaminatedDataset(Toy(2), "white_noise", multiplier=0)
    with pytest.raises(ValueError, match="published .* or per_clip"):
        ContaminatedDataset(Toy(2), "white_noise", draws="global")


# --------------------------------------------------------------------------------------------
# LJSpeech layout
# --------------------------------------------------------------------------------------------
LJ_RATE = 22050
LJ_FILES = {  # id -> (seconds, tone Hz); metadata order is not alphabetical order
    "LJ002-0001": (0.2, 300.0),  # shorter than the clips: zero-padded
    "LJ001-0001": (0.5, 500.0),  # longer: its start is used
    "LJ001-0002": (0.4, 700.0),
}


def write_ljspeech(root):
    """A tiny LJSpeech-1.1 folder: wavs/<id>.wav (22.05 kHz mono) and metadata.csv."""
    folder = root / "LJSpeech-1.1"
    (folder / "wavs").mkdir(parents=True)
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        for name, (seconds, hz) in LJ_FILES.items():
            t = np.arange(int(seconds * LJ_RATE)) / LJ_RATE
            sf.write(folder / "wavs" / f"{name}.wav", 0.5 * np.sin(2 * np.pi * hz * t), LJ_RATE)
            f.write(f"{name}|Text {name}.|Text {name}.\n")
    return folder


def resampled(folder, name):
    """What the published code feeds generate_mixture: T.Resample(22050, 16000)(wav[0]), the
    file read as torchaudio.load reads it (float32 in [-1, 1], channels first)."""
    wav, rate = sf.read(folder / "wavs" / f"{name}.wav", dtype="float32", always_2d=True)
    assert rate == LJ_RATE
    wav = torch.from_numpy(wav.T.copy())  # (channels, T)
    return torchaudio.transforms.Resample(22050, 16000)(wav[0])


def test_ljspeech_layout_any_level_metadata_order(tmp_path):
    folder = write_ljspeech(tmp_path)
    for path in (tmp_path, folder, folder / "wavs"):
        assert resolve_ljspeech(str(path)) == str(folder)
    files = ljspeech_files(str(tmp_path))
    assert [f.rsplit("/", 1)[1] for f in files] == [f"{n}.wav" for n in LJ_FILES]
    assert len(ljspeech_files(str(folder), max_files=2)) == 2
    clips = LJSpeechClips(str(folder / "wavs"), sample_rate=16000, max_files=2)
    assert len(clips) == 2
    for index, name in enumerate(list(LJ_FILES)[:2]):
        reference = resampled(folder, name)
        assert clips.load(index).shape == reference.shape
        assert torch.allclose(clips.load(index), reference, atol=1e-4)
    head = clips.head(1, 4000)  # LJ001-0001: 0.5 s = 8000 samples at 16 kHz, its start
    assert torch.allclose(head, resampled(folder, "LJ001-0001")[:4000], atol=1e-4)
    padded = clips.head(0, 8000)  # LJ002-0001: 0.2 s = 3200 samples, then zeros
    assert torch.allclose(padded[:3200], resampled(folder, "LJ002-0001"), atol=1e-4)
    assert float(padded[3200:].abs().max()) == 0.0


@pytest.mark.parametrize("draws", CONTAMINATION_DRAWS)
def test_ljspeech_contamination_follows_the_published_code(tmp_path, draws):
    folder = write_ljspeech(tmp_path)
    clips = LJSpeechClips(str(tmp_path), sample_rate=16000)
    valid = Toy(2, length=6000)
    data = ContaminatedDataset(
        valid, "LJSpeech", contamination=clips, multiplier=2, seed=1, draws=draws
    )
    names = list(LJ_FILES)
    for clip, drawn in enumerate(expected_indices(draws, 1, 2, 3, 2)):
        for version in range(2):
            noise = resampled(folder, names[drawn[version]])
            smpl = valid[clip]["sig"]
            if noise.shape[0] > smpl.shape[0]:
                noise = noise[: smpl.shape[0]]
            else:
                noise = torch.nn.functional.pad(noise, (0, smpl.shape[0] - noise.shape[0]))
            item = data[2 * clip + version]
            assert torch.allclose(item["sig"], generate_mixture(smpl, noise), atol=1e-5)
            assert_stems_exact(item, valid[clip])


def test_ljspeech_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs LJSpeech.*--ljspeech_path"):
        LJSpeechClips(None)
    with pytest.raises(FileNotFoundError, match="does not exist.*--ljspeech_path"):
        LJSpeechClips(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no LJSpeech.*--ljspeech_path"):
        LJSpeechClips(str(empty))
    folder = write_ljspeech(tmp_path / "partial")
    (folder / "wavs" / "LJ001-0002.wav").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 3 WAVs.*missing"):
        LJSpeechClips(str(folder))
    (folder / "metadata.csv").write_text("", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="lists no file"):
        LJSpeechClips(str(folder))


def test_generate_speech_like_ljspeech_layout(tmp_path):
    folder = tmp_path / "LJSpeech-1.1"
    paths = generate_speech_like(str(folder), n_files=3, duration=0.4, ljspeech_layout=True)
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"LJ001-000{k}.wav" for k in (1, 2, 3)]
    with open(folder / "metadata.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE))
    assert [row[0] for row in rows] == ["LJ001-0001", "LJ001-0002", "LJ001-0003"]
    assert all(len(row) == 3 for row in rows)
    assert sf.info(paths[0]).samplerate == 22050
    clips = LJSpeechClips(str(tmp_path), sample_rate=16000)
    assert len(clips) == 3 and clips.load(0).shape == (6400,)
    # Deterministic for a seed; the flat layout writes the same audio.
    flat = generate_speech_like(str(tmp_path / "flat"), n_files=1, duration=0.4)
    assert np.array_equal(sf.read(flat[0])[0], sf.read(paths[0])[0])


# --------------------------------------------------------------------------------------------
# Our protocol
# --------------------------------------------------------------------------------------------
def test_ours_white_noise_and_mixtures_follow_the_formulas():
    toy = Toy(3, labels=["a", "a", "b"])
    noisy = OverlapDataset(toy, "white_noise", seed=3)
    item = noisy[1]
    s = toy[1]["sig"]
    n = torch.randn(300, generator=item_generator(3, 1))
    expected = peak_normalize(s / s.abs().max() + 0.5 * n / n.abs().max())
    assert torch.allclose(item["sig"], expected, atol=1e-6)
    assert item["id"] == "clip1" and len(noisy) == 3
    assert_stems_exact(item, toy[1])
    assert torch.equal(noisy[1]["sig"], item["sig"])  # deterministic per index

    mixed = OverlapDataset(toy, "mixtures", seed=0)
    item = mixed[0]
    other = toy[2]["sig"]  # the only clip of another class
    s = toy[0]["sig"]
    expected = peak_normalize(0.8 * s / s.abs().max() + 0.2 * other / other.abs().max())
    assert torch.allclose(item["sig"], expected, atol=1e-6)
    assert_stems_exact(item, toy[0])


def test_ours_speech_is_a_random_crop(tmp_path):
    write_ljspeech(tmp_path)
    clips = LJSpeechClips(str(tmp_path), sample_rate=16000)
    crop = clips.crop(2000, item_generator(0, 0))
    assert crop.shape == (2000,) and float(crop.abs().max()) > 0.3
    item = OverlapDataset(Toy(2), "speech", seed=0, speech=clips)[1]
    assert item["sig"].shape == (300,) and float(item["sig"].abs().max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="LJSpeechClips"):
        OverlapDataset(Toy(2), "LJSpeech")

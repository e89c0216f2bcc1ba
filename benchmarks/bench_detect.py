"""Issue 3: atom detection with the built-in model vs a tuned classical baseline.

Held-out simulated images (seeds never used in training) of every family, 512².  Match radius:
0.25 × the median nearest-neighbour distance of the true columns.  Scoring leaves out a band of
half a spacing along the image edge (the truth lists only column centres inside the image, while
a column centred just outside is partly visible and rightly detected); the full-image F1 is shown
too.  HRTEM cases use an aligned microscope (two-fold astigmatism 5 Å; the other CTF parameters as
given, focal spread and C5 drawn from seed 003's ranges).  The classical baseline
(Gaussian filter + ``skimage.feature.peak_local_max``) is tuned *per case against the truth*
(grid over smoothing, threshold and minimum distance, told the true contrast polarity), which
is generous to it.  The model is told the contrast too (bright or dark atoms: what the user picks
in the Detect widget or with ``--polarity``); the "auto contrast" column says whether the
automatic guess (``polarity="auto"``, the default) picks the same, i.e. whether the model's
figure also holds without telling it.  "model" columns score the network's detections alone
(``detect_atoms``); "+ fit check" columns score what ``atomnet detect`` and the Detect widget
give by default (``find_atoms``): the detections refined by Gaussian fits, without those that
neither the model is sure of nor the fit confirms (the model card's ``fit_check`` rule, chosen
on validation images: a sure score per class, a least amplitude SNR and, at empty sites of the
strong columns, a family-wise significance among all those sites; HRTEM phase contrast is not
Gaussian, so there a detection must instead score at least the card's ``relative_score`` times
the median score of the image's detections).
"""

from __future__ import annotations

import itertools
import time

from _common import HELD_OUT_SEED, markdown_table, nn_spacing
from napari_atomnet import synth
from napari_atomnet.core.detect import detect_peaks_classical, resolve_polarity
from napari_atomnet.core.metrics import detection_scores
from napari_atomnet.models.detector import CONTRAST_CROP

S = (512, 512)


def cases(quick: bool) -> list[tuple[str, str, object]]:
    """(name, group, make(seed) -> AtomImage) for every benchmark case."""
    per = synth.perovskite_haadf
    lat = synth.lattice_image
    gr = synth.graphene_hrtem
    out = [
        (
            "HAADF perovskite, 500 counts/A peak",
            "haadf",
            lambda s: per(
                S,
                spacing=22,
                rotation_deg=8,
                dose=500,
                vacancy_fraction=0.02,
                dislocation=True,
                seed=s,
            ),
        ),
        (
            "HAADF perovskite, 50 counts/A peak",
            "haadf",
            lambda s: per(
                S,
                spacing=22,
                rotation_deg=8,
                dose=50,
                vacancy_fraction=0.02,
                dislocation=True,
                seed=s,
            ),
        ),
        (
            "HAADF perovskite, 20 counts/A peak",
            "haadf",
            lambda s: per(
                S,
                spacing=22,
                rotation_deg=8,
                dose=20,
                vacancy_fraction=0.02,
                dislocation=True,
                seed=s,
            ),
        ),
        (
            "HAADF perovskite, 9 counts/A peak",
            "lowdose",
            lambda s: per(S, spacing=22, rotation_deg=8, dose=9, seed=s),
        ),
        (
            "ABF-like dark columns (rocksalt), 100 counts",
            "haadf",
            lambda s: lat(
                S,
                lattice="rocksalt",
                spacing=13,
                polarity="dark",
                dose=100,
                rotation_deg=20,
                seed=s,
            ),
        ),
        (
            "ABF-like dark columns (rocksalt), 20 counts",
            "haadf",
            lambda s: lat(
                S, lattice="rocksalt", spacing=13, polarity="dark", dose=20, rotation_deg=20, seed=s
            ),
        ),
        (
            "ABF-like dark columns, 9 counts",
            "lowdose",
            lambda s: lat(S, lattice="square", spacing=14, polarity="dark", dose=9, seed=s),
        ),
        (
            "Overlapping columns (σ = 0.35 × spacing, 10 px)",
            "overlap",
            lambda s: lat(S, lattice="square", spacing=10, sigma_frac=0.35, dose=300, seed=s),
        ),
        (
            "Weak B next to strong A (perovskite, 12 px cells, σ 2.2 px)",
            "overlap",
            lambda s: per(S, spacing=12, sigma=2.2, dose=300, seed=s),
        ),
        (
            "Dense lattice, 6 px spacing",
            "haadf",
            lambda s: lat(S, lattice="hexagonal", spacing=6, dose=200, seed=s),
        ),
        (
            "Sparse lattice, 38 px spacing",
            "haadf",
            lambda s: lat(S, lattice="square", spacing=38, dose=200, seed=s),
        ),
        (
            "HRTEM graphene, bright atoms, 1e4 e/Å²",
            "hrtem",
            lambda s: gr(S, defocus=-60, cs_um=-10, dose=1e4, astig_angstrom=5.0, seed=s),
        ),
        (
            "HRTEM graphene, dark atoms, 1e4 e/Å²",
            "hrtem",
            lambda s: gr(S, defocus=60, cs_um=-10, dose=1e4, astig_angstrom=5.0, seed=s),
        ),
        (
            "HRTEM graphene, bright atoms, 1e3 e/Å²",
            "hrtem",
            lambda s: gr(S, defocus=-60, cs_um=-10, dose=1e3, astig_angstrom=5.0, seed=s),
        ),
        (
            "HRTEM graphene, dark atoms, 1e3 e/Å²",
            "hrtem",
            lambda s: gr(S, defocus=60, cs_um=-10, dose=1e3, astig_angstrom=5.0, seed=s),
        ),
        (
            "Crystalline nanoparticle on a support (vacuum around)",
            "haadf",
            lambda s: lat(
                S,
                lattice="hexagonal",
                spacing=12,
                dose=150,
                surface={"kind": "circle", "radius_frac": 0.35, "vacuum_inside": False},
                seed=s,
            ),
        ),
        (
            "Interface: square / hexagonal lattice",
            "haadf",
            lambda s: lat(
                S,
                lattice="square",
                spacing=14,
                dose=150,
                interface={"lattice": "hexagonal", "spacing": 12, "rotation_deg": 15},
                seed=s,
            ),
        ),
    ]
    return out[:6] if quick else out


HRTEM_DETECTOR = "atomnet-hrtem"
#: First seed of the images at other samplings (held out: never drawn in training)
SAMPLING_SEED = HELD_OUT_SEED + 700

HRTEM_TEXT = """\
**HRTEM model.** The built-in `{name}` (sha256 `{sha}…`) is a wider network than the general
detector ({widths}), trained from scratch on graphene HRTEM simulations only (seed 003's
recipe); users pick it for phase-contrast
images (Detect widget: model; CLI: `--model {name}`). The same HRTEM cases, the same pipeline
(``find_atoms`` with the HRTEM card's defaults: its thresholds; {refine}; {check}). With
"auto" contrast the HRTEM model decides it itself (its card's ``contrast_guess``): it runs on
the image both ways and keeps the contrast under which its detections' scores add up to more
(the image's look, which the general model's guess reads, does not say it in phase contrast);
the last column says whether that matches the truth:"""

LIMIT_TEXT = """\
**What the 10⁴ e/Å² images hold.** The HRTEM model (alone, at its card's threshold) on the
same structure imaged differently: without noise; without noise and phase-flipped with the
simulation's own CTF (every frequency brought to the same sign: the best a linear correction
knowing the microscope can do); and the projected potential itself, cut at the first zero of
the CTF's azimuthal mean (the resolution the microscope transfers before the contrast reverses).
With dark atoms the first zero lies at about 1.9 Å, beyond graphene's 2.13 Å ring but short of
its 1.42 Å bonds; the atoms there must be placed from the pattern, not from the image's
extrema. The last two columns are images the model never saw in training (no CTF ringing); on
the bright case's cut potential, which keeps everything down to 0.9 Å, it still misses some."""


SPREAD_TEXT = """\
**Over many imaging conditions.** Four benchmark images say little about a model for phase
contrast, whose images change with every focus. Here {n} held-out images (320², 0.12 Å/px; seeds
from 4,000,000, never used in training or validation), each at its own aligned microscope:
defocus uniform in ±100 Å, Cs in ±20 µm, astigmatism 0-10 Å, dose 3·10³, 10⁴ or 3·10⁴ e/Å²,
zero to four holes; only images whose atoms show clear contrast are kept (|contrast| ≥ 0.5,
`synth.graphene_hrtem`'s measure). Each model alone at its card's threshold, told the
contrast:"""


SAMPLING_TEXT = """\
**Other samplings, with and without a pixel size.** `{name}` learnt graphene at
{low:g}-{high:g} Å/px (its card's ``sampling_angstrom``). An image of another sampling is
resampled to {centre:g} Å/px before detection when its pixel size is known (a calibrated file,
the layer's scale, ``--pixel-size``); when it is not, the model finds it from the atoms' spacing
against graphene's 1.42 Å (``estimate_sampling``: the model on a 320² crop resampled to
0.05-0.31 Å/px in 12 % steps, then refined on the spacing it finds). Held-out 400² images at
defocus +60 Å (dark atoms) or -60 Å (bright), Cs -10 µm, astigmatism 5 Å, 10⁴ e/Å², seeds
from {seed}; F1 told the contrast:"""

ESTIMATE_TEXT = """\
How close the found pixel size comes, over {n} held-out 512² images at random aligned
conditions (pixel size 0.06-0.25 Å/px, log-uniform; defocus ±120 Å, Cs ±20 µm, astigmatism
0-10 Å, dose 10³-3·10⁴ e/Å² log-uniform; |contrast| ≥ 0.5; contrast guessed by the model;
seeds from 4,100,000): median error {median:+.1f} %, median |error| {mad:.1f} %, 95 % of them
within {p95:.1f} %, the worst {worst:+.1f} %{missed}; {seconds:.1f} s per image on this CPU
(the model's range is ±{half:.0f} % about its centre)."""


def hrtem_sampling(card, quick: bool) -> tuple[list[dict], dict]:
    """Score a one-sampling HRTEM model at other samplings, with and without the pixel size.

    Also measures how close the pixel size it finds on uncalibrated images comes.
    """
    import numpy as np

    from napari_atomnet.models.detector import detect_atoms, estimate_sampling

    rows = []
    for k, px in enumerate((0.08, 0.15) if quick else (0.06, 0.08, 0.10, 0.15, 0.18, 0.24)):
        for polarity, defocus in (("dark", 60.0), ("bright", -60.0)):
            sim = synth.graphene_hrtem(
                (400, 400),
                pixel_size_angstrom=px,
                defocus=defocus,
                cs_um=-10,
                astig_angstrom=5.0,
                dose=1e4,
                seed=SAMPLING_SEED + k,
            )
            truth = sim.atoms[["y", "x"]].to_numpy()
            spacing = nn_spacing(truth)
            row = {"pixel size (Å)": px, "atoms": polarity}
            for told, px_nm in (("given", px / 10), ("unknown", None)):
                found = detect_atoms(sim.image, card, polarity=polarity, pixel_size_nm=px_nm)
                xy = found.table[["y", "x"]].to_numpy()
                row[f"F1, pixel size {told}"] = _scored(xy, truth, sim.image.shape, spacing)["f1"]
                if px_nm is None:
                    found_px = found.params.get("pixel_size_angstrom")
                    row["pixel size found (Å)"] = found_px
                    row["error"] = (
                        f"{100 * (found_px / px - 1):+.1f} %" if found_px else "not found"
                    )
            rows.append(row)
    rng = np.random.default_rng(5)
    errors, seconds, k = [], [], 0
    while len(errors) < (4 if quick else 30):
        k += 1
        px = float(np.exp(rng.uniform(np.log(0.06), np.log(0.25))))
        params = {
            "defocus": rng.uniform(-120, 120),
            "cs_um": rng.uniform(-20, 20),
            "dose": float(np.exp(rng.uniform(np.log(1e3), np.log(3e4)))),
            "astig_angstrom": rng.uniform(0, 10),
        }
        sim = synth.graphene_hrtem((512, 512), pixel_size_angstrom=px, seed=4_100_000 + k, **params)
        if abs(sim.extras["contrast"]) < 0.5:
            continue
        t0 = time.perf_counter()
        found_px = estimate_sampling(sim.image, card)
        seconds.append(time.perf_counter() - t0)
        errors.append(np.nan if found_px is None else found_px / px - 1)
    e = 100 * np.array(errors)
    low, high = card.sampling_angstrom
    summary = {
        "n": len(e),
        "median": float(np.nanmedian(e)),
        "mad": float(np.nanmedian(np.abs(e))),
        "p95": float(np.nanpercentile(np.abs(e), 95)),
        "worst": float(e[np.nanargmax(np.abs(e))]),
        "missed": f", {int(np.isnan(e).sum())} not found" if np.isnan(e).any() else "",
        "seconds": float(np.median(seconds)),
        "half": 100 * (high - low) / (high + low),
    }
    return rows, summary


def hrtem_spread(models: dict, quick: bool) -> list[dict]:
    """F1 of each detector on held-out HRTEM images at random aligned imaging conditions."""
    import numpy as np

    from napari_atomnet.models.detector import detect_atoms

    rng = np.random.default_rng(4_000_000)
    f1 = {name: [] for name in models}
    auto_right = dict.fromkeys(models, 0)
    bright = []
    while len(bright) < (6 if quick else 40):
        params = {
            "defocus": rng.uniform(-100, 100),
            "cs_um": rng.uniform(-20, 20),
            "astig_angstrom": rng.uniform(0, 10),
            "dose": float(rng.choice([3e3, 1e4, 3e4])),
        }
        seed = int(rng.integers(4_000_000, 5_000_000))
        sim = synth.graphene_hrtem((320, 320), pixel_size_angstrom=0.12, seed=seed, **params)
        if abs(sim.extras["contrast"]) < 0.5:
            continue
        truth = sim.atoms[["y", "x"]].to_numpy()
        spacing = nn_spacing(truth)
        polarity = polarity_of(sim)
        bright.append(polarity == "bright")
        for name, card in models.items():
            found = detect_atoms(sim.image, card, polarity=polarity, pixel_size_nm=0.012)
            found = found.table[["y", "x"]]
            f1[name].append(_scored(found.to_numpy(), truth, sim.image.shape, spacing)["f1"])
            auto_right[name] += auto_contrast(sim, card) == "same"
    bright = np.array(bright)
    rows = []
    for name, scores in f1.items():
        v = np.array(scores)
        others = np.array([f1[o] for o in f1 if o != name]).max(axis=0)
        rows.append(
            {
                "model": f"`{name}`",
                "images": len(v),
                "mean F1": float(v.mean()),
                "median F1": float(np.median(v)),
                "lowest F1": float(v.min()),
                "mean F1, bright atoms": float(v[bright].mean()),
                "mean F1, dark atoms": float(v[~bright].mean()),
                "images where it beats the other": f"{int((v > others).sum())} of {len(v)}",
                "auto contrast right": f"{auto_right[name]} of {len(v)}",
            }
        )
    return rows


def _widths(model, general) -> str:
    """Say a model's layer widths and size beside the general detector's."""

    def arch(c) -> str:
        a = c.info.get("architecture", {})
        widths = "-".join(map(str, a.get("channels", [])))
        return f"widths {widths}, {a.get('parameters', 0):,} parameters"

    return f"{arch(model)}; the general one: {arch(general)}"


def _general(rows: list[dict], name: str) -> dict:
    row = next(r for r in rows if r["case"] == name)
    return {
        "general model + fit check F1": row["+ fit check F1"],
        "classical F1 (tuned)": row["classical F1 (tuned)"],
    }


def _scored(found, truth, shape, spacing) -> dict:
    return detection_scores(found, truth, 0.25 * spacing, shape=shape, border=0.5 * spacing)


def detect_and_check(sim, card) -> tuple:
    """Score a detector's own detections and what ``find_atoms`` keeps of them.

    Returns
    -------
    found : ndarray, shape (n, 2)
        The detector's (y, x), told the contrast.
    alone, checked : dict
        Their scores and those of ``find_atoms`` with the card's defaults (detect, Gaussian
        fits unless the card turns them off, fit check: what ``atomnet detect`` and the widget
        give), with the edge band left out.
    """
    from napari_atomnet.models.detector import detect_atoms
    from napari_atomnet.pipeline import find_atoms

    truth = sim.atoms[["y", "x"]].to_numpy()
    spacing = nn_spacing(truth)
    polarity = polarity_of(sim)
    px = sim.pixel_size_nm  # as a calibrated file gives it
    found = detect_atoms(sim.image, card, polarity=polarity, pixel_size_nm=px)
    found = found.table[["y", "x"]].to_numpy()
    atoms = find_atoms(sim.image, detector=card, polarity=polarity, pixel_size_nm=px).atoms
    checked = _scored(atoms[["y", "x"]].to_numpy(), truth, sim.image.shape, spacing)
    return found, _scored(found, truth, sim.image.shape, spacing), checked


def auto_contrast(sim, card) -> str:
    """Say whether ``detect_atoms(polarity="auto")`` with ``card`` gets the contrast right."""
    from napari_atomnet.models.detector import detect_atoms

    guess = detect_atoms(sim.image, card, polarity="auto", pixel_size_nm=sim.pixel_size_nm)
    guess = guess.params["polarity"]
    return "same" if guess == polarity_of(sim) else f"wrong ({guess})"


def hrtem_model_scores(sim, card) -> dict:
    """F1 of a detector alone and through ``find_atoms`` on one simulated image."""
    _, alone, checked = detect_and_check(sim, card)
    return {
        "HRTEM model, auto contrast": auto_contrast(sim, card),
        "HRTEM model F1": alone["f1"],
        "HRTEM model, find_atoms recall": checked["recall"],
        "HRTEM model, find_atoms precision": checked["precision"],
        "HRTEM model, find_atoms F1": checked["f1"],
    }


def information_limit(sim, card) -> dict:
    """Score a detector on one HRTEM structure with less and less of the imaging in the way."""
    import numpy as np

    from napari_atomnet.models.detector import detect_atoms
    from napari_atomnet.synth.hrtem import simulation_ctf
    from napari_atomnet.synth.lattice import _splat_isotropic

    p = sim.params
    px = p["pixel_size_angstrom"]
    truth = sim.atoms[["y", "x"]].to_numpy()
    spacing = nn_spacing(truth)
    polarity = polarity_of(sim)
    shape = sim.image.shape
    transfer = simulation_ctf(p, shape)
    # weak-phase object: the image's spectrum is the potential's times 2 E(q) sin chi(q)
    linear = 2 * np.imag(np.conj(transfer))
    q = np.hypot(
        *np.meshgrid(np.fft.fftfreq(shape[0], px), np.fft.fftfreq(shape[1], px), indexing="ij")
    )
    edges = np.arange(0.05, 1.0 / (2 * px), 2.0 / (min(shape) * px))  # two FFT pixels wide
    ring = np.digitize(q, edges)
    mean = np.array([linear[ring == k].mean() for k in range(1, len(edges))])
    flips = np.nonzero(np.sign(mean[1:]) != np.sign(mean[:-1]))[0]
    q_zero = float(edges[flips[0] + 1]) if len(flips) else float(edges[-1])

    clean = np.asarray(sim.extras["clean"], dtype=np.float64)
    spectrum = np.fft.fft2(clean - clean.mean())
    flipped = np.real(np.fft.ifft2(spectrum * np.sign(linear)))  # atoms bright, either way
    potential = _splat_isotropic(
        shape, truth[:, 0], truth[:, 1], 1.0, p["atom_sigma_angstrom"] / px, radius=4.0
    )
    cut = np.real(np.fft.ifft2(np.fft.fft2(potential) * (q < q_zero)))

    def f1(image, pol) -> float:
        found = detect_atoms(image, card, polarity=pol, pixel_size_nm=px / 10)
        found = found.table[["y", "x"]].to_numpy()
        return _scored(found, truth, shape, spacing)["f1"]

    return {
        "first CTF zero (Å)": 1.0 / q_zero,
        "noisy image": f1(sim.image, polarity),
        "noise-free image": f1(clean, polarity),
        "noise-free, phase-flipped with the true CTF": f1(flipped, "bright"),
        "projected potential, cut at the first CTF zero": f1(cut, "bright"),
    }


def polarity_of(sim) -> str:
    if "polarity" in sim.extras:
        value = sim.extras["polarity"]
        return "bright" if (value == 1 or value == "bright") else "dark"
    return sim.params.get("polarity", "bright")


def tuned_classical(image, truth, radius, polarity, spacing):
    band = {"shape": image.shape, "border": 0.5 * spacing}
    best = None
    for sigma, thr, md in itertools.product(
        (0.5, 1.0, 1.5, 2.5), (0.02, 0.05, 0.1, 0.2, 0.35), (0.25, 0.4, 0.6)
    ):
        found = detect_peaks_classical(
            image,
            sigma=sigma,
            threshold_rel=thr,
            min_distance=max(1, int(md * spacing)),
            polarity=polarity,
        )
        score = detection_scores(found[["y", "x"]].to_numpy(), truth, radius, **band)
        if best is None or score["f1"] > best["f1"]:
            best = {**score, "params": f"σ={sigma}, thr={thr}, md={md}×"}
    return best


def run(quick: bool = False) -> dict:
    from napari_atomnet.models.detector import detect_atoms
    from napari_atomnet.models.registry import load_model

    card = load_model("atomnet-detect", task="detection")
    rows = []
    hrtem_sims = {}
    for i, (name, group, make) in enumerate(cases(quick)):
        sim = make(HELD_OUT_SEED + i)
        if group == "hrtem":
            hrtem_sims[name] = sim
        truth = sim.atoms[["y", "x"]].to_numpy()
        spacing = nn_spacing(truth)
        radius = 0.25 * spacing
        polarity = polarity_of(sim)
        guess = resolve_polarity(sim.image, "auto")
        found, model, checked = detect_and_check(sim, card)
        full = detection_scores(found, truth, radius)
        base = tuned_classical(sim.image, truth, radius, polarity, spacing)
        rows.append(
            {
                "case": name,
                "group": group,
                "atoms": len(truth),
                "model recall": model["recall"],
                "model precision": model["precision"],
                "model F1": model["f1"],
                "model F1 (full image)": full["f1"],
                "+ fit check recall": checked["recall"],
                "+ fit check precision": checked["precision"],
                "+ fit check F1": checked["f1"],
                "classical F1 (tuned)": base["f1"],
                "classical params": base["params"],
                "contrast": polarity,
                "auto contrast": "same" if guess == polarity else f"wrong ({guess})",
            }
        )
        print(
            f"  {name}: model F1 {model['f1']:.4f}, + fit check {checked['f1']:.4f}, "
            f"classical {base['f1']:.4f}",
            flush=True,
        )

    hrtem_card = load_model(HRTEM_DETECTOR, task="detection")
    hrtem_rows = [
        {**hrtem_model_scores(sim, hrtem_card), "case": name, **_general(rows, name)}
        for name, sim in hrtem_sims.items()
    ]
    spread_rows = hrtem_spread({"atomnet-detect": card, HRTEM_DETECTOR: hrtem_card}, quick)
    sampling_rows, estimate = (
        hrtem_sampling(hrtem_card, quick) if hrtem_card.spacing_angstrom else ([], {})
    )
    limit_rows = [
        {"case": name, **information_limit(sim, hrtem_card)}
        for name, sim in hrtem_sims.items()
        if sim.params["dose"] >= 1e4
    ]

    # CPU inference time per megapixel on a 2048² image (session warm)
    big = synth.lattice_image((2048, 2048), spacing=12, dose=200, seed=HELD_OUT_SEED + 99)
    detect_atoms(big.image[:256, :256], card, device="cpu")
    times: dict[str, list[float]] = {"bright": [], "auto": []}
    for _ in range(2 if quick else 3):
        for polarity in times:
            t0 = time.perf_counter()
            det = detect_atoms(big.image, card, device="cpu", polarity=polarity)
            times[polarity].append(time.perf_counter() - t0)
    ms_per_mp = 1000 * min(times["bright"]) / (big.image.size / 1e6)
    ms_per_mp_auto = 1000 * min(times["auto"]) / (big.image.size / 1e6)
    # the HRTEM model: told the contrast, or guessing it (two passes)
    graphene = synth.graphene_hrtem(
        (2048, 2048), pixel_size_angstrom=0.12, defocus=60, cs_um=-10, seed=HELD_OUT_SEED + 98
    )
    detect_atoms(graphene.image[:256, :256], hrtem_card, device="cpu", pixel_size_nm=0.012)
    hrtem_times: dict[str, list[float]] = {polarity_of(graphene): [], "auto": []}
    if hrtem_card.spacing_angstrom:  # it finds an uncalibrated image's sampling first
        hrtem_times["unknown"] = []
    for _ in range(2 if quick else 3):
        for polarity in hrtem_times:
            t0 = time.perf_counter()
            detect_atoms(
                graphene.image,
                hrtem_card,
                device="cpu",
                polarity="auto" if polarity == "unknown" else polarity,
                pixel_size_nm=None if polarity == "unknown" else 0.012,  # a calibrated file
            )
            hrtem_times[polarity].append(time.perf_counter() - t0)
    hrtem_ms = {k: 1000 * min(v) / (graphene.image.size / 1e6) for k, v in hrtem_times.items()}

    md = [
        __doc__.strip().split("\n\n", 1)[1],
        "",
        f"Model: `{card.name}` (sha256 `{card.sha256[:12]}…`), default threshold "
        f"{card.info.get('default_threshold')}.",
        "",
        markdown_table(
            rows,
            [
                "case",
                "atoms",
                "model recall",
                "model precision",
                "model F1",
                "model F1 (full image)",
                "+ fit check recall",
                "+ fit check precision",
                "+ fit check F1",
                "classical F1 (tuned)",
                "classical params",
                "contrast",
                "auto contrast",
            ],
        ),
        "",
        HRTEM_TEXT.format(
            name=hrtem_card.name,
            sha=hrtem_card.sha256[:12],
            widths=_widths(hrtem_card, card),
            refine="Gaussian refinement"
            if hrtem_card.refine_default
            else "no refinement (its card turns it off: its validation images' fits were not "
            "Gaussian, and refinement would keep the detected positions)",
            check="its fit check"
            if hrtem_card.info.get("fit_check")
            else "no fit check (its validation found no rule that helps), so the two HRTEM F1 "
            "columns agree",
        ),
        "",
        markdown_table(
            hrtem_rows,
            [
                "case",
                "general model + fit check F1",
                "HRTEM model F1",
                "HRTEM model, find_atoms recall",
                "HRTEM model, find_atoms precision",
                "HRTEM model, find_atoms F1",
                "classical F1 (tuned)",
                "HRTEM model, auto contrast",
            ],
        ),
        "",
        SPREAD_TEXT.format(n=spread_rows[0]["images"]),
        "",
        markdown_table(
            spread_rows,
            [
                "model",
                "mean F1",
                "median F1",
                "lowest F1",
                "mean F1, bright atoms",
                "mean F1, dark atoms",
                "images where it beats the other",
                "auto contrast right",
            ],
        ),
        "",
        *(
            [
                SAMPLING_TEXT.format(
                    name=hrtem_card.name,
                    low=hrtem_card.sampling_angstrom[0],
                    high=hrtem_card.sampling_angstrom[1],
                    centre=round(sum(hrtem_card.sampling_angstrom) / 2, 4),
                    seed=SAMPLING_SEED,
                ),
                "",
                markdown_table(
                    sampling_rows,
                    [
                        "pixel size (Å)",
                        "atoms",
                        "F1, pixel size given",
                        "F1, pixel size unknown",
                        "pixel size found (Å)",
                        "error",
                    ],
                ),
                "",
                ESTIMATE_TEXT.format(**estimate),
                "",
            ]
            if sampling_rows
            else []
        ),
        LIMIT_TEXT,
        "",
        markdown_table(
            limit_rows,
            [
                "case",
                "first CTF zero (Å)",
                "noisy image",
                "noise-free image",
                "noise-free, phase-flipped with the true CTF",
                "projected potential, cut at the first CTF zero",
            ],
        ),
        "",
        f"CPU inference (onnxruntime, 2048² = 4.2 MP, detection incl. normalisation, tiling and "
        f"decoding, session warm, contrast given): **{ms_per_mp:.0f} ms per megapixel** "
        f"({min(times['bright']):.2f} s for the image, {len(det.table):,} columns); with the "
        f"contrast guessed (``polarity='auto'``): {ms_per_mp_auto:.0f} ms per megapixel. "
        f"`{hrtem_card.name}` on a 2048² graphene image: "
        f"{hrtem_ms[polarity_of(graphene)]:.0f} ms per megapixel told the contrast, "
        f"{hrtem_ms['auto']:.0f} with ``polarity='auto'`` (both ways on the central "
        f"{CONTRAST_CROP}², "
        "then the whole image once)"
        + (
            f", both with the pixel size given; {hrtem_ms['unknown']:.0f} with the pixel size "
            "unknown as well (found first)."
            if "unknown" in hrtem_ms
            else "."
        ),
    ]
    return {
        "title": "Atom detection (issue 3)",
        "markdown": "\n".join(md),
        "figures": {
            "rows": rows,
            "hrtem_rows": hrtem_rows,
            "information_limit_rows": limit_rows,
            "hrtem_spread_rows": spread_rows,
            "ms_per_megapixel": ms_per_mp,
            "ms_per_megapixel_auto": ms_per_mp_auto,
            "hrtem_ms_per_megapixel": hrtem_ms,
            "hrtem_sampling_rows": sampling_rows,
            "hrtem_sampling_estimate": estimate,
        },
    }

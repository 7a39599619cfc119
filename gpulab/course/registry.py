"""The chapter registry: one record per chapter of the course, planned ones included.

Everything that needs to know "which chapters exist and where their files are" reads it:
``gpulab chapters``, the grader (which solution a submission belongs to), the contract
test (``tests/course/test_contract.py``), the README's chapter table, ``make test CH=NN``
and ``gpulab bench NN``. A new chapter starts as a record here.

    from gpulab.course.registry import CHAPTERS, chapter
    chapter("06").lecture      # Path('notebooks/06_gaussian_splatting.ipynb')
    chapter("kernel_fusion").number

Paths are relative to the course checkout (the folder holding ``gpulab/``). This module
imports nothing of torch or numba, so ``gpulab chapters`` answers at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Paper", "Chapter", "CHAPTERS", "chapter", "READY", "BUILT", "PLANNED", "course_root", "readme_table",
           "README_BEGIN", "README_END"]

READY = "ready"        # every file, tested, and its benchmark recorded on a GPU
BUILT = "built"        # every file and tested under the simulator; no GPU figures recorded yet
PLANNED = "planned"    # a record only
_STATUSES = (READY, BUILT, PLANNED)


@dataclass(frozen=True)
class Paper:
    title: str
    arxiv: str | None  # None only where the work has no arXiv version (then ``venue`` says where)
    venue: str = ""


    @property
    def short_name(self) -> str:
        """The name before the subtitle ("QMoE" for "QMoE: Practical ..."), for tables."""
        return self.title.split(": ")[0]

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else ""


@dataclass(frozen=True)
class Chapter:
    number: str            # two digits, "00" .. "18"
    slug: str              # file stem after the number: notebooks/NN_slug.ipynb
    family: str | None     # the gpulab subpackage holding its kernels (None: core only)
    title: str
    papers: tuple[Paper, ...] = ()
    status: str = PLANNED
    benchmark_stem: str | None = None  # benchmarks/<stem>.py if not NN_slug (chapter 00's)
    extra_families: tuple[str, ...] = field(default=())  # earlier families it builds on

    def __post_init__(self):
        if len(self.number) != 2 or not self.number.isdigit():
            raise ValueError(f"chapter number must be two digits, got {self.number!r}")
        if self.status not in _STATUSES:
            raise ValueError(f"chapter {self.number}: status must be one of {_STATUSES}, got {self.status!r}")

    @property
    def stem(self) -> str:
        return f"{self.number}_{self.slug}"

    @property
    def lecture(self) -> Path:
        return Path("notebooks") / f"{self.stem}.ipynb"

    @property
    def solution(self) -> Path:
        return Path("solutions") / f"{self.stem}.ipynb"

    @property
    def exercise(self) -> Path:
        return Path("exercises") / f"{self.stem}.ipynb"

    @property
    def checks_module(self) -> str:
        """The graded checks of its assignment (course layer)."""
        return f"gpulab.course.checks.ch{self.stem}"

    @property
    def benchmark(self) -> Path:
        return Path("benchmarks") / f"{self.benchmark_stem or self.stem}.py"

    @property
    def results(self) -> Path:
        return Path("benchmarks") / "results" / f"{self.benchmark_stem or self.stem}.json"

    @property
    def tests(self) -> Path:
        return Path("tests") / f"ch{self.stem}"

    @property
    def marker(self) -> str:
        """The pytest marker of its tests (``pytest -m ch06``)."""
        return f"ch{self.number}"

    @property
    def ready(self) -> bool:
        return self.status == READY

    @property
    def built(self) -> bool:
        """Ready or built: its lecture, assignment, checks and tests exist (a learner can
        take it; a built one has not met a GPU yet, so its results file may be missing)."""
        return self.status in (READY, BUILT)


def _p(title: str, arxiv: str | None, venue: str = "") -> Paper:
    return Paper(title, arxiv, venue)


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("00", "start_here", "basics", "Start here: kernels, the simulator, checks and timing",
            status=READY, benchmark_stem="00_launch_overhead"),
    Chapter("01", "gpu_architecture", "arch", "GPU architecture by microbenchmark", (
        _p("Benchmarking and Dissecting the Nvidia Hopper GPU Architecture", "2402.13499"),
        _p("Analyzing Modern NVIDIA GPU cores", "2503.20481")), status=BUILT),
    Chapter("02", "gemm", "gemm", "GEMM: tiling, occupancy, performance and energy models", (
        _p("Understanding GEMM Performance and Energy on NVIDIA Ada Lovelace: "
           "A Machine Learning-Based Analytical Approach", "2411.16954"),), status=BUILT, extra_families=("arch",)),
    Chapter("03", "kernel_fusion", "fusion", "Kernel fusion", (
        _p("The Fused Kernel Library: A C++ API to Develop Highly-Efficient GPU Libraries", "2508.07071"),
        _p("Hardware Acceleration of Neural Graphics", "2303.05735")), status=READY),
    Chapter("04", "attention", "attention", "Attention kernels", (
        _p("FastAttention: Extend FlashAttention2 to NPUs and Low-resource GPUs", "2410.16663"),
        _p("SLA: Beyond Sparsity in Diffusion Transformers via Fine-Tunable Sparse-Linear Attention",
           "2509.24006")), status=BUILT),
    Chapter("05", "low_precision", "lowbit", "Low precision and sparsity", (
        _p("Tilus: A Virtual Machine for Arbitrary Low-Precision GPGPU Computation in LLM Serving", "2504.12984"),
        _p("QMoE: Practical Sub-1-Bit Compression of Trillion-Parameter Models", "2310.16795"),
        _p("Boost Vision Transformer with GPU-Friendly Sparsity and Quantization", "2305.10727"))),
    Chapter("06", "gaussian_splatting", "splat", "Gaussian splatting rasterizer", (
        _p("3D Gaussian Splatting for Real-Time Radiance Field Rendering", "2308.04079"),), status=READY),
    Chapter("07", "splat_primitives", "splat", "Splatting primitives and shading", (
        _p("4D Gaussian Splatting: Towards Efficient Novel View Synthesis for Dynamic Scenes", "2402.03307"),
        _p("3D Convex Splatting: Radiance Field Rendering with 3D Smooth Convexes", "2411.14974"),
        _p("3DGabSplat: 3D Gabor Splatting", "2508.05343"),
        _p("Triangle Splatting for Real-Time Radiance Field Rendering", "2505.19175"),
        _p("Triangle Splatting+: Differentiable Rendering with Opaque Triangles", "2509.25122"),
        _p("Relightable 3D Gaussians", "2311.16043"),
        _p("GI-GS: Global Illumination Decomposition on Gaussian Splatting", "2410.02619"),
        _p("HRM²Avatar: High-Fidelity Real-Time Mobile Avatars from Monocular Phone Scans", "2510.13587")),
        status=BUILT),
    Chapter("08", "nerf", "nerf", "NeRF sampling and volume rendering", (
        _p("RT-NeRF: Real-Time On-Device Neural Radiance Fields Towards Immersive AR/VR Rendering",
           "2212.01120"),
        _p("Dynamic Mesh-Aware Radiance Fields", "2309.04581"),
        _p("KiloNeuS: A Versatile Neural Implicit Surface Representation for Real-Time Rendering",
           "2206.10885")), status=BUILT),
    Chapter("09", "neural_fields", "fields", "Neural fields: encodings and tiny MLPs", (
        _p("Hardware Acceleration of Neural Graphics", "2303.05735"),
        _p("KiloNeuS: A Versatile Neural Implicit Surface Representation for Real-Time Rendering",
           "2206.10885"),
        _p("Real-Time Neural Light Field on Mobile Devices", "2212.08057"),
        _p("Real-Time Neural Appearance Models", "2305.02678")), extra_families=("nerf",)),
    Chapter("10", "gaussian_ray_casting", "raycast", "Ray casting Gaussians through a BVH", (
        _p("RayGauss: Volumetric Gaussian-Based Ray Casting for Photorealistic Novel View Synthesis", "2408.03356"),
        _p("GENIE: Gaussian Encoding for Neural Radiance Fields Interactive Editing", "2508.02831"),
        _p("Relightable 3D Gaussians", "2311.16043")), extra_families=("splat",)),
    Chapter("11", "moe", "moe", "MoE kernels and expert offload", (
        _p("FlashMoE: Fast Distributed MoE in a Single Kernel", "2506.04667"),
        _p("MixLoRA: Enhancing Large Language Models Fine-Tuning with LoRA-based Mixture of Experts",
           "2404.15159"),
        _p("HybriMoE: Hybrid CPU-GPU Scheduling and Cache Management for Efficient MoE Inference",
           "2504.05897")), status=READY, extra_families=("gemm",)),  # its grouped GEMM: gemm.tiling
    Chapter("12", "serving", "serving", "Serving under constraints", (
        _p("MoE-Lens: Towards the Hardware Limit of High-Throughput MoE LLM Serving Under Resource "
           "Constraints", "2504.09345"),
        _p("Mélange: Cost Efficient Large Language Model Serving by Exploiting GPU Heterogeneity",
           "2404.14527")),
        extra_families=("moe",)),
    Chapter("13", "memory_offload", "offload", "Memory offload for training", (
        _p("ZO2: Scalable Zeroth-Order Fine-Tuning for Extremely Large Language Models with Limited "
           "GPU Memory", "2503.12668"),
        _p("Adding NVMe SSDs to Enable and Accelerate 100B Model Fine-tuning on a Single GPU", "2403.06504"),
        _p("PyTorch-Direct: Enabling GPU Centric Data Access for Very Large Graph Neural Network "
           "Training with Irregular Accesses", "2101.07956"),
        _p("Code generation and runtime techniques for enabling data-efficient deep learning "
           "training on GPUs", "2412.04747"))),
    Chapter("14", "distributed", "dist", "Distributed training", (
        _p("TorchTitan: One-stop PyTorch native solution for production ready LLM pre-training", "2410.06511"),
        _p("Galvatron: Automatic Distributed Training for Large Transformer Models", "2504.03662")), status=READY),
    Chapter("15", "streaming_diffusion", "stream", "Streaming diffusion", (
        _p("StreamDiffusion: A Pipeline-level Solution for Real-time Interactive Generation", "2312.12491"),
        _p("StreamDiffusionV2: A Streaming System for Dynamic and Interactive Video Generation",
           "2511.07399"),
        _p("Rolling Forcing: Autoregressive Long Video Diffusion in Real Time", "2509.25161"),
        _p("MotionStream: Real-Time Video Generation with Interactive Motion Controls", "2511.01266"),
        _p("RAIN: Real-time Animation of Infinite Video Stream", "2412.19489")), extra_families=("attention",)),
    Chapter("16", "parallel_generation", "pargen", "Parallel long and high-resolution generation", (
        _p("Video-Infinity: Distributed Long Video Generation", "2406.16260"),
        _p("Minute-Long Videos with Dual Parallelisms", "2505.21070"),
        _p("Macro-from-Micro Planning for High-Quality and Parallelized Autoregressive Long Video "
           "Generation", "2508.03334"),
        _p("ASGDiffusion: Parallel High-Resolution Generation with Asynchronous Structure Guidance",
           "2412.06163"),
        _p("Fast and Memory-Efficient Video Diffusion Using Streamlined Inference", "2411.01171"),
        _p("Optimal Linear Subspace Search: Learning to Construct Fast and High-Quality Schedulers for "
           "Diffusion Models", "2305.14677"))),
    Chapter("17", "kernel_agents", "kernelagent", "LLM kernel agents", (
        _p("CudaForge: An Agent Framework with Hardware Feedback for CUDA Kernel Optimization", "2511.01884"),
        _p("CUDA-L1: Improving CUDA Optimization via Contrastive Reinforcement Learning", "2507.14111"),
        _p("CUDA-LLM: LLMs Can Write Efficient CUDA Kernels", "2506.09092"),
        _p("ConCuR: Conciseness Makes State-of-the-Art Kernel Generation", "2510.07356"),
        _p("HPCTransCompile: An AI Compiler Generated Dataset for High-Performance CUDA Transpilation "
           "and LLM Preliminary Exploration", "2506.10401"),
        _p("Towards Robust Agentic CUDA Kernel Benchmarking, Verification, and Optimization", "2509.14279")),
        status=READY),
    Chapter("18", "applications", "apps", "Graphics and robotics applications", (
        _p("LivePortrait: Efficient Portrait Animation with Stitching and Retargeting Control", "2407.03168"),
        _p("One Model to Rig Them All: Diverse Skeleton Rigging with UniRig", "2504.12451"),
        _p("BODex: Scalable and Efficient Robotic Dexterous Grasp Synthesis Using Bilevel Optimization",
           "2412.16490"),
        _p("CAST: Component-Aligned 3D Scene Reconstruction from an RGB Image", "2502.12894"),
        _p("Diffusion as Shader: 3D-aware Video Diffusion for Versatile Video Generation Control",
           "2501.03847"),
        _p("GenLit: Reformulating Single-Image Relighting as Video Generation", "2412.11224"),
        _p("BlenderGym: Benchmarking Foundational Model Systems for Graphics Editing", "2504.01786"))),
)


def chapter(key: str | int) -> Chapter:
    """The chapter with this number (``6``, ``"06"``), stem (``"06_gaussian_splatting"``) or slug."""
    text = f"{key:02d}" if isinstance(key, int) else str(key).strip()
    if text.isdigit():
        text = f"{int(text):02d}"
    for ch in CHAPTERS:
        if text in (ch.number, ch.slug, ch.stem):
            return ch
    known = ", ".join(f"{c.number} ({c.slug})" for c in CHAPTERS)
    raise KeyError(f"no chapter {key!r}; the chapters are {known}")


README_BEGIN = "<!-- chapters:begin -->"
README_END = "<!-- chapters:end -->"


def _paper_cell(paper: Paper) -> str:
    return f"[{paper.short_name}]({paper.url})" if paper.url else f"{paper.short_name} ({paper.venue})"


def readme_table() -> str:
    """The README's chapter table, rendered from the registry (a test holds them equal).

    A ready or built chapter links its lecture; each paper links its arXiv page. A built
    chapter's status says that its GPU figures are still to come.
    """
    rows = ["| ch | chapter | papers | status |", "|---|---|---|---|"]
    for ch in CHAPTERS:
        name = f"[{ch.title}]({ch.lecture.as_posix()})" if ch.built else ch.title
        papers = "; ".join(_paper_cell(p) for p in ch.papers) or "—"
        status = "built (GPU figures pending)" if ch.status == BUILT else ch.status
        rows.append(f"| {ch.number} | {name} | {papers} | {status} |")
    return "\n".join(rows)


def course_root(start: Path | None = None) -> Path:
    """The course checkout: the nearest folder at or above ``start`` (default: the current
    folder) that holds ``gpulab/`` and ``solutions/``, else the one this package sits in."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "solutions").is_dir() and (folder / "gpulab").is_dir():
            return folder
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "solutions").is_dir():
        return package_root
    raise FileNotFoundError("no course checkout found (a folder with solutions/ and gpulab/); "
                            "run this from inside the course folder")

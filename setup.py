"""Build csd_fast and its one extension module, csd_fast._C.

CPU kernels are always compiled. CUDA kernels are compiled when CSD_FAST_CUDA=1 demands
them (then a missing toolkit or cuDNN frontend is an error), or, with CSD_FAST_CUDA
unset, when a GPU is visible and torch, a CUDA toolkit and the cuDNN frontend headers
are all found. CSD_FAST_CUDA=0 forces a CPU-only build.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"
# ATen's vector types (at::vec) pick their SIMD width at compile time from these macros;
# without them an extension gets the slow generic fallback.
CPU_CAPABILITY_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}


SUMMARY = []  # what is built and why: printed once, when the extension is compiled


def log(msg):
    print(f"csd_fast build: {msg}", file=sys.stderr, flush=True)


def is_cuda_home(path):
    return bool(path) and all(
        os.path.exists(os.path.join(path, p))
        for p in ("bin/nvcc", "include/cuda_runtime.h")
    )


def find_cuda_home():
    """A toolkit folder holding both nvcc and the runtime headers.

    torch guesses CUDA_HOME as the parent of nvcc's folder; where nvcc is a wrapper
    script in /usr/local/bin that guess has no headers or cudart, so look further.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var] if is_cuda_home(os.environ[var]) else None
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if is_cuda_home(c)), None)


def pip_cuda_include_dirs():
    """Headers of the pip CUDA wheels (ATen's CUDA headers include cusparse.h, which a
    runtime-only toolkit lacks)."""
    found = []
    for root in pip_package_dirs():
        for folder in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if os.path.exists(os.path.join(folder, "cusparse.h")) and folder not in found:
                found.append(folder)
    return found


def pip_package_dirs():
    """Folders that may hold pip-installed packages, torch's own first: under pip's build
    isolation torch lives in a temporary prefix that site.getsitepackages() omits."""
    import site

    import torch

    roots = [os.path.dirname(os.path.dirname(torch.__file__))]
    roots += site.getsitepackages() + [site.getusersitepackages()] + sys.path
    return [r for r in dict.fromkeys(roots) if r and os.path.isdir(r)]


def cudnn_dirs():
    """(include, lib) of the cuDNN that torch's CUDA wheels bring (nvidia-cudnn-cu*)."""
    for root in pip_package_dirs():
        folder = os.path.join(root, "nvidia", "cudnn")
        if os.path.exists(os.path.join(folder, "include", "cudnn.h")):
            return os.path.join(folder, "include"), os.path.join(folder, "lib")
    return None


def nvrtc_dirs(cuda_home):
    """(folder of nvrtc.h, folder of libnvrtc, its file name), or None. The cuDNN
    frontend headers include nvrtc.h and call NVRTC to compile engines at run time; a
    runtime-only toolkit may lack both, which torch's pip CUDA wheels then provide."""
    roots = [cuda_home] + [d for r in pip_package_dirs()
                           for d in sorted(glob.glob(os.path.join(r, "nvidia", "*")))]
    include = next((os.path.join(r, "include") for r in roots
                    if os.path.exists(os.path.join(r, "include", "nvrtc.h"))), None)
    for root in roots:
        for folder in ("lib64", "lib"):
            names = [os.path.basename(f) for f in glob.glob(os.path.join(root, folder, "libnvrtc.so*"))]
            names = sorted((n for n in names if "builtins" not in n and ".alt." not in n), key=len)
            if include and names:
                return include, os.path.join(root, folder), names[0]
    return None


def cudnn_frontend_include():
    """The header-only C++ graph API shipped by the nvidia-cudnn-frontend package."""
    from importlib import metadata

    try:
        files = metadata.files("nvidia-cudnn-frontend") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace(os.sep, "/").endswith("include/cudnn_frontend.h"):
            return os.path.dirname(str(f.locate()))
    return None


def cuda_requested():
    flag = os.environ.get("CSD_FAST_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        sys.exit(f"csd_fast build: CSD_FAST_CUDA must be 0 or 1, got {flag!r}")
    return flag


def configure_cuda():
    """(CUDA kernels?, why not / what with). Sets CUDA_HOME before cpp_extension reads it."""
    flag = cuda_requested()
    if flag == "0":
        return None, "CSD_FAST_CUDA=0"
    import torch

    if flag == "" and not torch.cuda.is_available():
        # compiling CUDA kernels takes minutes on a small machine: only where they can run
        return None, "no GPU visible (CSD_FAST_CUDA=1 builds them anyway)"
    reason = None
    cuda_home = find_cuda_home()
    cudnn = cudnn_dirs()
    frontend = cudnn_frontend_include()
    nvrtc = nvrtc_dirs(cuda_home) if cuda_home else None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} was built without CUDA"
    elif cuda_home is None:
        reason = "no CUDA toolkit found (set CUDA_HOME to a folder with bin/nvcc)"
    elif cudnn is None:
        reason = "no cuDNN headers beside torch (the nvidia-cudnn-cu* wheel)"
    elif frontend is None:
        reason = "the cuDNN frontend headers are missing: pip install nvidia-cudnn-frontend"
    elif nvrtc is None:
        reason = (f"NVRTC (nvrtc.h and libnvrtc.so, which the cuDNN frontend needs) is neither "
                  f"in {cuda_home} nor in a pip nvidia-* package")
    if reason:
        if flag == "1":
            sys.exit(f"csd_fast build: CSD_FAST_CUDA=1 but {reason}")
        return None, reason
    os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    return dict(home=cuda_home, cudnn=cudnn, frontend=frontend, nvrtc=nvrtc), None


def cpu_capability():
    """SIMD level of the CPU kernels: CSD_FAST_CPU_CAPABILITY, else what torch detects
    on the build machine (the kernels then need a CPU at least as capable)."""
    import torch

    wanted = os.environ.get("CSD_FAST_CPU_CAPABILITY", "").strip().upper()
    if wanted and wanted not in CPU_CAPABILITY_FLAGS:
        sys.exit(f"csd_fast build: CSD_FAST_CPU_CAPABILITY must be one of "
                 f"{sorted(CPU_CAPABILITY_FLAGS)}, got {wanted!r}")
    if not wanted:
        detected = torch.backends.cpu.get_cpu_capability()
        wanted = detected if detected in CPU_CAPABILITY_FLAGS else "DEFAULT"
    return wanted


def cuda_arch_label():
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    archs = []
    for flag in _get_cuda_arch_flags():
        # -gencode=arch=compute_90,code=sm_90 -> sm_90 (or compute_90 for PTX)
        code = flag.split("code=")[-1]
        archs.append(code)
    return ",".join(sorted(set(archs)))


def extensions():
    cuda, no_cuda_reason = configure_cuda()
    with_cuda = cuda is not None
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    archs = ""
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        archs = cuda_arch_label()
    capability = cpu_capability()
    if with_cuda:
        SUMMARY.append(f"CPU kernels ({capability}) and CUDA kernels ({archs}; "
                       f"CUDA_HOME={cuda['home']})")
    else:
        SUMMARY.append(f"CPU kernels ({capability}) only: {no_cuda_reason}")
    defines = [
        f'-DCSD_FAST_TORCH_VERSION="{torch.__version__}"',
        f'-DCSD_FAST_CUDA_ARCHS="{archs}"',
        f'-DCSD_FAST_CPU_CAPABILITY="{capability}"',
    ] + (["-DCSD_FAST_WITH_CUDA"] if with_cuda else [])
    # csd_fast._C uses only CPython's stable ABI, so one wheel serves every Python >= 3.10
    limited_api = ["-DPy_LIMITED_API=0x030A0000"]
    # -g0: Python's own CFLAGS carry -g, which made the .so 59 MB and the build slower
    cxx = ["-O3", "-g0", "-fdiagnostics-color=always"] + CPU_CAPABILITY_FLAGS[capability] + defines
    kwargs = dict(
        name="csd_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx + limited_api},
        py_limited_api=True,
    )
    if not with_cuda:
        return [CppExtension(**kwargs)]
    cudnn_include, cudnn_lib = cuda["cudnn"]
    nvrtc_include, nvrtc_lib, nvrtc_name = cuda["nvrtc"]
    kwargs["include_dirs"] += list(dict.fromkeys(
        pip_cuda_include_dirs() + [cudnn_include, cuda["frontend"], nvrtc_include]))
    kwargs["extra_compile_args"]["nvcc"] = ["-O3"] + defines
    # The graph API calls cuDNN and NVRTC directly; torch has already loaded both.
    kwargs["library_dirs"] = [cudnn_lib, nvrtc_lib]
    kwargs["extra_link_args"] = ["-l:libcudnn.so.9", f"-l:{nvrtc_name}"]
    return [CUDAExtension(**kwargs)]


def build_ext_cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class Build(base):
        # pip runs this file once for metadata and once to build: say it at the build only
        def run(self):
            for line in SUMMARY:
                log(line)
            super().run()

    return {"build_ext": Build}


setup(
    packages=find_packages(include=["csd_fast", "csd_fast.*"]),
    ext_modules=extensions(),
    cmdclass=build_ext_cmdclass(),
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)

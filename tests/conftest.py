"""Shared fixtures: a config on the hash embedder, small Chinese/English corpora written at test time."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from rag.core.config import RagConfig, load_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KBQA_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """A script of the repository (``scripts/x.py``, ``bench/y.py``) loaded as a module, to test its functions."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

CORPUS = {
    "运维/磁盘.md": "# 磁盘管理\n\n## 空间不足\n\n服务器磁盘空间不足时，先用 df -h 查看各分区的使用率，"
    "再用 du -sh 找出占用最大的目录。日志文件通常在 /var/log 下，可以用 logrotate 定期压缩。\n\n"
    "## 挂载\n\n新磁盘需要先分区、格式化为 ext4，再写入 /etc/fstab 才能开机自动挂载。\n",
    "运维/打印机.txt": "打印机驱动安装步骤：先从厂商网站下载驱动程序，然后在控制面板中添加打印机，"
    "选择网络打印机并输入 IP 地址 10.0.0.25。安装完成后打印测试页确认。\n",
    "hr/年假.md": "# 年假制度\n\n工作满一年不满十年的员工，每年享受五天带薪年假；满十年不满二十年的，年假十天。"
    "年假需提前三个工作日在 OA 系统中申请。\n",
    "en/vpn.md": "# VPN access\n\nTo connect to the office VPN, install the WireGuard client and import the "
    "profile sent by the help desk. The VPN gateway is vpn.example.com on UDP port 51820.\n",
}


def write_corpus(folder: Path, files: dict[str, str] | None = None) -> Path:
    for name, text in (files or CORPUS).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def cfg(tmp_path: Path) -> RagConfig:
    """The default config on the deterministic hash embedder, indexing into tmp_path/index."""
    return load_config(
        None,
        [f"index.dir={tmp_path / 'index'}", "embed.source=hash", "load.workers=1", "load.timeout_s=60",
         "split.chunk_size=120", "split.chunk_overlap=20"],
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "kb")

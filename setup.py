"""smsgw: a headless SMS gateway for Termux that speaks the medic-gateway protocol."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="smsgw",
    version="0.1.0",
    description="Headless SMS gateway for Termux speaking the medic-gateway HTTP/JSON protocol",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="AGPL-3.0-or-later",
    python_requires=">=3.10",
    packages=find_packages(include=["smsgw", "smsgw.*"]),
    install_requires=[
        "requests>=2.28",
        "urllib3>=2.6",  # bounded gzip inflation per read (decompression-bomb safety)
        "click>=8.1",
        "tinydb>=4.7",
        "schedule>=1.2",
        "gsm0338>=1.1",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            "trustme>=1.0",
            "ruff>=0.5",
        ],
    },
    # The Termux scripts travel with the package so install.sh copies them from
    # $PREFIX/share/smsgw/termux after `pip install`.
    data_files=[
        ("share/smsgw/termux/boot", ["termux/boot/smsgw"]),
        ("share/smsgw/termux/service/smsgw", ["termux/service/smsgw/run"]),
        ("share/smsgw/termux/tasker", ["termux/tasker/smsgw-sms-received"]),
        ("share/smsgw/termux/watchdog", ["termux/watchdog/smsgw-watchdog"]),
    ],
    entry_points={"console_scripts": ["smsgw=smsgw.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: Android",
        "Environment :: Console",
    ],
)

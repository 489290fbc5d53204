"""The one thing setup.cfg cannot say: ship the top-level configs/ folder inside the package.

The recipes stay in configs/ (their only copy); the build maps that folder to the package
``torchdistill_mismatch.configs``, so the wheel holds ``torchdistill_mismatch/configs/**/*.yaml`` and
``torchdistill_mismatch.resources`` finds them in an installed package. setup.cfg's ``packages = find:``
cannot add a package from outside the package tree, hence the list here.
"""
from setuptools import find_packages, setup

CONFIG_PACKAGE = 'torchdistill_mismatch.configs'

setup(
    packages=find_packages(include=['torchdistill_mismatch', 'torchdistill_mismatch.*']) + [CONFIG_PACKAGE],
    package_dir={CONFIG_PACKAGE: 'configs'},
    package_data={CONFIG_PACKAGE: ['*.yaml', '**/*.yaml']},
)

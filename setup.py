from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("flexlb.balancer._blockhash", ["flexlb/balancer/_blockhash.c"], extra_compile_args=["-O3"]),
    ]
)

# Sourced by the device scripts (launch/nass_device*.sh, cnunet_device.sh, cnunet_gpu_profile.sh):
# the carried wheels into /tmp/site
# (WHEELS folder, default .whl; SKIP_WHEELS=1 for a CPU dry run), the compilation cache, and,
# in a copy of the checkout that is not pip-installed (the GPU host), the checkout on
# PYTHONPATH with spatialsep_jax.configs / .launch linked to the top-level folders
# (pyproject's package-dir mapping).
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHEELS:-.whl}/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
REPO=$PWD
if ! (cd /tmp && python3 -c "import spatialsep_jax.launch.common, spatialsep_jax.configs.base" 2>/dev/null); then
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$REPO
  [ -e spatialsep_jax/configs ] || ln -s ../configs spatialsep_jax/configs
  [ -e spatialsep_jax/launch ] || ln -s ../launch spatialsep_jax/launch
  (cd /tmp && python3 -c "import spatialsep_jax.launch.common, spatialsep_jax.configs.base, data_pipeline.dataset") || exit 1
  echo "[device_env] linked spatialsep_jax/configs and spatialsep_jax/launch in this copy"
fi
# PESQ from its sdist (no cp312 wheel exists; the image has Cython and a C compiler), where the
# wheels folder holds pesq-*.tar.gz and the pytest-runner wheel its setup.py asks for.
PESQ_SDIST=$(ls ${WHEELS:-.whl}/pesq-*.tar.gz 2>/dev/null | head -1)
if [ -n "$PESQ_SDIST" ] && ! python3 -c "import pesq" 2>/dev/null; then
  if timeout 180 python3 -m pip install -q --no-index --no-deps --no-build-isolation \
      --target /tmp/site $PESQ_SDIST > /tmp/pesq_build.log 2>&1 && python3 -c "import pesq" 2>/dev/null; then
    echo "[device_env] pesq built from $PESQ_SDIST"
  else
    echo "[device_env] pesq did not build from $PESQ_SDIST:"; tail -4 /tmp/pesq_build.log
  fi
fi

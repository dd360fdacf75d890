#!/usr/bin/env bash
# What a ROS user does after cloning into a workspace: colcon build, check colcon sees an
# ament_python package, start the `perception` executable from the install space, see one frame.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ws=$(mktemp -d)
python -m pip install -q "colcon-common-extensions" "ros-jazzy-ament-package"
listing=$(colcon list --base-paths "$repo")
echo "colcon list: $listing"
grep -q "dense_perception.*(ros.ament_python)" <<<"$listing" || { echo "colcon does not see an ament_python package" >&2; exit 1; }
colcon --log-base "$ws/log" build --base-paths "$repo" --build-base "$ws/build" --install-base "$ws/install" \
  --event-handlers console_direct- >/dev/null
set +u; . "$ws/install/setup.bash"; set -u
exe="$ws/install/dense_perception/lib/dense_perception/perception"
[ -x "$exe" ] || { echo "no perception executable in the install space" >&2; exit 1; }
params="$ws/params.yaml"
cat > "$params" <<'YAML'
/**:
  ros__parameters:
    input_size: [64, 64]
/**/depth:
  ros__parameters:
    network: dpt_hybrid_nyu   # metric depth, so the cloud node builds a cloud
YAML
"$exe" --ros-args --params-file "$params" > "$ws/perception.log" 2>&1 &
pid=$!
status=0
python "$repo/.ci/perception_smoke.py" 240 || status=$?
kill -INT "$pid" 2>/dev/null || true
exit_status=0
wait "$pid" || exit_status=$?
if [ "$exit_status" -ne 0 ]; then
  echo "perception exited with status $exit_status after Ctrl-C (expected 0)" >&2
  status=1
fi
[ "$status" -eq 0 ] || { echo "--- perception log ---"; tail -40 "$ws/perception.log"; }
rm -rf "$ws"
exit "$status"

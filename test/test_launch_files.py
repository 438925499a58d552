"""Static checks of launch/*.launch.py, without the launch packages.

Each launch file is parsed with ``ast`` (never imported), and:
- it defines ``generate_launch_description``;
- every LaunchConfiguration it reads is declared in it (DeclareLaunchArgument);
- every ami_ros executable it starts is a console entry in setup.py, and the node
  name equals the executable name;
- every file it references in the ami_ros share directory exists in the repository;
- every ami_ros node's parameter file has a ``<node name>: ros__parameters:`` key;
- every argument it passes to an included ami_ros launch file is declared there, and
  every argument without a default there is passed.
"""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ami_ros"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
EXPECTED = {"sim.launch.py", "robot.launch.py", "gazebo.launch.py"}


# ------------------------------------------------------------------ ast helpers
def call_name(node):
    """Name of the called function ('Node' for Node(...) and launch_ros.actions.Node(...))."""
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name):
            return f.id
        if isinstance(f, ast.Attribute):
            return f.attr
    return None


def kwarg(call, name):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def const_str(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def calls(tree, *names):
    return [n for n in ast.walk(tree) if call_name(n) in names]


def local_names(tree):
    """{variable: expression} for simple assignments ``x = <expr>`` anywhere in the file."""
    out = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            out[n.targets[0].id] = n.value
    return out


def resolve(node, names, depth=0):
    """Follow simple variable references."""
    while isinstance(node, ast.Name) and node.id in names and depth < 10:
        node, depth = names[node.id], depth + 1
    return node


def share_path(node, names):
    """(package, relative path) of a PathJoinSubstitution([FindPackageShare(pkg), 'a', 'b'])
    or os.path.join(get_package_share_directory(pkg), 'a', 'b'); None otherwise."""
    node = resolve(node, names)
    if call_name(node) == "PathJoinSubstitution" and node.args and isinstance(node.args[0], (ast.List, ast.Tuple)):
        parts = node.args[0].elts
    elif call_name(node) == "join" and node.args:
        parts = node.args
    else:
        return None
    if not parts:
        return None
    head = resolve(parts[0], names)
    if call_name(head) not in ("FindPackageShare", "get_package_share_directory") or not head.args:
        return None
    pkg = const_str(head.args[0])
    rest = [const_str(resolve(p, names)) for p in parts[1:]]
    if pkg is None or any(r is None for r in rest):
        return None
    return pkg, "/".join(rest)


def launch_config_name(node, names):
    node = resolve(node, names)
    if call_name(node) == "LaunchConfiguration" and node.args:
        return const_str(node.args[0])
    return None


class LaunchFile:
    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.names = local_names(self.tree)
        self.declared = {}  # argument -> default expression (or None)
        for c in calls(self.tree, "DeclareLaunchArgument"):
            name = const_str(c.args[0]) if c.args else const_str(kwarg(c, "name"))
            assert name, f"{path.name}: DeclareLaunchArgument without a literal name (line {c.lineno})"
            self.declared[name] = kwarg(c, "default_value")
        self.required = {name for name, default in self.declared.items() if default is None}

    def default_share_path(self, arg):
        default = self.declared.get(arg)
        return None if default is None else share_path(default, self.names)

    def ami_nodes(self):
        for c in calls(self.tree, "Node"):
            if const_str(kwarg(c, "package")) == PACKAGE:
                yield c


def console_entries():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for n in ast.walk(tree):
        if isinstance(n, ast.Dict):
            for k, v in zip(n.keys, n.values):
                if const_str(k) == "console_scripts" and isinstance(v, (ast.List, ast.Tuple)):
                    return {const_str(e).split("=")[0].strip() for e in v.elts}
    raise AssertionError("setup.py has no console_scripts")


@pytest.fixture(scope="module", params=[p.name for p in LAUNCH_FILES])
def launch_file(request):
    return LaunchFile(ROOT / "launch" / request.param)


# ------------------------------------------------------------------ tests
def test_expected_launch_files_exist():
    assert EXPECTED <= {p.name for p in LAUNCH_FILES}, f"missing {EXPECTED - {p.name for p in LAUNCH_FILES}}"


def test_defines_generate_launch_description(launch_file):
    funcs = [n.name for n in launch_file.tree.body if isinstance(n, ast.FunctionDef)]
    assert "generate_launch_description" in funcs


def test_launch_configurations_are_declared(launch_file):
    used = {launch_config_name(c, {}) for c in calls(launch_file.tree, "LaunchConfiguration")}
    undeclared = sorted(u for u in used if u and u not in launch_file.declared)
    assert not undeclared, f"{launch_file.path.name}: LaunchConfiguration of undeclared argument(s) {undeclared}"


def test_executables_are_console_entries(launch_file):
    entries = console_entries()
    for c in launch_file.ami_nodes():
        exe, name = const_str(kwarg(c, "executable")), const_str(kwarg(c, "name"))
        assert exe in entries, f"{launch_file.path.name}:{c.lineno}: executable {exe!r} is not in setup.py {sorted(entries)}"
        assert name == exe, f"{launch_file.path.name}:{c.lineno}: node name {name!r} != executable {exe!r}"


def test_a_node_that_exits_shuts_the_launch_down(launch_file):
    """A node that cannot start (a bad model, a bad robot description) ends the launch, not a
    half-up graph: every ami_ros node has on_exit=Shutdown()."""
    for c in launch_file.ami_nodes():
        assert call_name(kwarg(c, "on_exit")) == "Shutdown", \
            f"{launch_file.path.name}:{c.lineno}: {const_str(kwarg(c, 'name'))} lacks on_exit=Shutdown()"


def test_referenced_package_files_exist(launch_file):
    found = 0
    for n in ast.walk(launch_file.tree):
        ref = share_path(n, {})
        if ref and ref[0] == PACKAGE:
            found += 1
            assert (ROOT / ref[1]).is_file(), f"{launch_file.path.name}:{n.lineno}: {ref[1]} does not exist"
    # every yaml / launch file named in a literal goes through the share directory
    for n in ast.walk(launch_file.tree):
        s = const_str(n)
        if s and (s.endswith(".yaml") or s.endswith(".launch.py")):
            assert any(share_path(p, {}) and s in share_path(p, {})[1].split("/")
                       for p in ast.walk(launch_file.tree)), \
                f"{launch_file.path.name}: {s!r} is not resolved through the package share directory"
    assert found or not list(launch_file.ami_nodes())


def test_node_parameter_files_have_node_key(launch_file):
    for c in launch_file.ami_nodes():
        name = const_str(kwarg(c, "name"))
        params = kwarg(c, "parameters")
        assert isinstance(params, (ast.List, ast.Tuple)), f"{name}: parameters=[...] missing"
        files = []
        for p in params.elts:
            ref = share_path(p, launch_file.names)
            arg = launch_config_name(p, launch_file.names)
            if arg is not None:
                ref = launch_file.default_share_path(arg)
                assert ref is not None, f"{name}: argument {arg!r} has no package-share default"
            if ref is not None:
                files.append(ROOT / ref[1])
        assert files, f"{launch_file.path.name}: node {name} is given no parameter file"
        for f in files:
            data = yaml.safe_load(f.read_text())
            assert isinstance(data, dict) and name in data, f"{f.name} has no top-level key {name!r}"
            assert isinstance(data[name], dict) and "ros__parameters" in data[name], \
                f"{f.name}: {name}: has no ros__parameters"


def test_included_launch_arguments_are_declared(launch_file):
    for c in calls(launch_file.tree, "IncludeLaunchDescription"):
        source = c.args[0] if c.args else kwarg(c, "launch_description_source")
        ref = share_path(source.args[0], launch_file.names) if call_name(source) else None
        if not ref or ref[0] != PACKAGE:
            continue  # another package's launch file (e.g. ros_gz_sim)
        included = LaunchFile(ROOT / ref[1])
        args = kwarg(c, "launch_arguments")
        if args is None:
            continue
        func = getattr(args, "func", None)
        mapping = func.value if isinstance(func, ast.Attribute) else None  # {...}.items()
        assert isinstance(mapping, ast.Dict), f"{launch_file.path.name}:{c.lineno}: launch_arguments must be {{...}}.items()"
        keys = [const_str(k) for k in mapping.keys]
        unknown = sorted(k for k in keys if k not in included.declared)
        assert not unknown, f"{launch_file.path.name}: passes undeclared argument(s) {unknown} to {ref[1]}"
        required = sorted(k for k in included.required if k not in keys)   # no default: must be passed on
        assert not required, f"{launch_file.path.name}: does not pass required argument(s) {required} to {ref[1]}"


def test_robot_launch_requires_the_controller_start():
    """The gate's model of the controller is a choice the user makes, not a default."""
    assert "controller_start" in LaunchFile(ROOT / "launch" / "robot.launch.py").required


def test_the_simulator_is_launched_behind_the_stacks_prefix():
    """sim.launch.py runs sim_node niced as the bench's node processes do (one SIM_PREFIX)."""
    tree = ast.parse((ROOT / "launch" / "sim.launch.py").read_text())
    sim = [c for c in calls(tree, "Node") if const_str(kwarg(c, "executable")) == "sim_node"]
    assert len(sim) == 1 and "SIM_PREFIX" in ast.unparse(kwarg(sim[0], "prefix"))


def test_gz_bridge_config():
    entries = yaml.safe_load((ROOT / "config" / "gz_bridge.yaml").read_text())
    assert isinstance(entries, list) and entries
    keys = {"ros_topic_name", "gz_topic_name", "ros_type_name", "gz_type_name", "direction"}
    for e in entries:
        assert set(e) == keys, e
        assert e["direction"] in ("GZ_TO_ROS", "ROS_TO_GZ", "BIDIRECTIONAL"), e
    by_ros = {e["ros_topic_name"]: e for e in entries}
    for topic, direction in [("/clock", "GZ_TO_ROS"), ("/camera/image_raw", "GZ_TO_ROS"),
                             ("/camera/camera_info", "GZ_TO_ROS")]:
        assert topic in by_ros and by_ros[topic]["direction"] == direction, topic
    # joint states and commands go through ros2_control, not the bridge
    assert "/joint_states" not in by_ros and "/arm_controller/joint_trajectory" not in by_ros
    from ami_ros.sim.gazebo import CAMERA_TOPIC
    assert by_ros["/camera/image_raw"]["gz_topic_name"] == CAMERA_TOPIC


def test_launch_and_config_files_are_installed():
    text = (ROOT / "setup.py").read_text()
    assert 'glob("launch/*.py")' in text and 'glob("config/*")' in text

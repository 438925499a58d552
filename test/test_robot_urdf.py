"""The arm loader and ``ami-ros robot show`` on URDFs nobody here wrote, and the FK agreement
of the stack, the simulator and the gate.

Third-party URDFs come from ``example-robot-data`` (a test-only dependency: ``pip install
.[test]``; its wheel installs them under the cmeel prefix, ``<site-packages>/cmeel.prefix/
share/example-robot-data/robots``). The tests that need them skip, saying so, where it is
not installed. Nothing from the package is committed.

Checks:
  a. UR5 (``ur5_robot.urdf``, tool0) and Panda (``panda.urdf``, panda_hand) load with
     ``load_arm(path, tool_frame=...)``; their collision geometry is meshes, so the loader
     warns and falls back to segment volumes;
  b. FK of the stack (``ArmSpec.tool_pose`` and ``ArmSpec.link_positions``, float64 as the gate
     uses them) equals MuJoCo's, compiled from the same URDF text with its mesh elements
     removed, over 1,000 random configurations within the limits: tool position and joint
     frame origins within 1e-6 m, tool rotation within 1e-6; a 1 mm change to the URDF
     MuJoCo reads is caught;
  c. the same for the shipped arms, against the scene the simulator runs
     (``ami_ros.sim.scene.build_model``) and its site named after the tool frame: the
     done-when figure "FK of the stack, the simulator and the gate agree within 1e-6 m over
     1,000 random configurations";
  d. ``ami-ros robot show --json`` on each shipped arm and the two third-party URDFs: exit 0,
     one JSON document on stdout, the tool pose at home equal to ``ArmSpec.tool_pose(home)``
     within 1e-9; bad robot, widening limits file and bad ``--q`` -> exit 2 with the reason
     on stderr.

Run with ``pytest -s`` to see the measured errors.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_kinematics")
mujoco = pytest.importorskip("mujoco")

# MuJoCo's note on build_model's attach (the scene is never saved)
pytestmark = pytest.mark.filterwarnings("ignore:Attaching a spec with an empty prefix:UserWarning")

from ami_ros.cli import main  # noqa: E402
from ami_ros.core.arm import load_arm, share_dir, shipped_robots  # noqa: E402

N_CONFIGS = 1000
FK_TOL = 1e-6          # m (and unitless for rotation-matrix entries)
POSE_TOL = 1e-9        # the JSON's tool pose vs ArmSpec.tool_pose
ROT_REPR_TOL = 1e-7    # its quaternion and rpy vs ArmSpec's rotation (see check_pose_entry)
SEED = 20240611

# third-party URDFs: key -> (path under the package's robots/, tool frame)
THIRD_PARTY = {
    "ur5": ("ur_description/urdf/ur5_robot.urdf", "tool0"),
    "panda": ("panda_description/urdf/panda.urdf", "panda_hand"),
}


# ----------------------------------------------------------------- locating example-robot-data
def erd_robots_dir() -> str | None:
    """``<prefix>/share/example-robot-data/robots`` of the installed wheel, or None. The wheel
    has no importable module (only files under cmeel.prefix), so its distribution record
    locates the folder."""
    try:
        dist = importlib.metadata.distribution("example-robot-data")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = os.fspath(dist.locate_file(os.path.join("cmeel.prefix", "share", "example-robot-data", "robots")))
    return path if os.path.isdir(path) else None


def erd_version() -> str | None:
    try:
        return importlib.metadata.version("example-robot-data")
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def erd_dir():
    d = erd_robots_dir()
    if d is None:
        pytest.skip("example-robot-data is not installed (test-only dependency: pip install example-robot-data, "
                    "or pip install .[test]); its URDFs are the third-party robots these tests load")
    return d


_third_party_cache: dict = {}


@pytest.fixture(params=sorted(THIRD_PARTY), scope="module")
def third_party(request, erd_dir):
    """(key, URDF path, ArmSpec) of a third-party robot (loaded once per module)."""
    key = request.param
    rel, tool = THIRD_PARTY[key]
    path = os.path.join(erd_dir, rel)
    assert os.path.isfile(path), f"example-robot-data {erd_version()} has no {rel}"
    if key not in _third_party_cache:
        _third_party_cache[key] = load_arm(path, tool_frame=tool)
    return key, path, _third_party_cache[key]


# ----------------------------------------------------------------- helpers
def random_configs(spec, n: int, seed: int = SEED) -> np.ndarray:
    """(n, dof) uniform within the limits (a continuous joint: within [-pi, pi])."""
    lo = np.where(np.isfinite(spec.q_min), spec.q_min, -np.pi)
    hi = np.where(np.isfinite(spec.q_max), spec.q_max, np.pi)
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, spec.dof))


def mujoco_urdf(urdf: str) -> str:
    """The URDF as MuJoCo reads it without its meshes: every <visual>/<collision> holding a
    <mesh> removed, and ``<mujoco><compiler fusestatic="false" discardvisual="true"/></mujoco>``
    injected (fusestatic false keeps fixed-joint frames such as tool0 as bodies)."""
    root = ET.fromstring(urdf.encode())
    for link in root.findall("link"):
        for tag in ("visual", "collision"):
            for el in link.findall(tag):
                if el.find("geometry/mesh") is not None:
                    link.remove(el)
    mj = ET.Element("mujoco")
    ET.SubElement(mj, "compiler", fusestatic="false", discardvisual="true")
    root.insert(0, mj)
    return ET.tostring(root, encoding="unicode")


def mujoco_fk(model, qs: np.ndarray, joint_names, frames, base: str | None, tool_site: str | None = None):
    """MuJoCo's kinematics over configurations qs (N, dof): positions of the bodies ``frames``
    (N, F, 3) and the rotation of the last frame (N, 3, 3), in the frame of body ``base``
    (None: the world). With ``tool_site`` the last frame is that site instead of a body."""
    data = mujoco.MjData(model)
    adr = [model.joint(n).qposadr[0] for n in joint_names]
    bodies = [model.body(f).id for f in frames]
    base_id = model.body(base).id if base is not None else 0
    site = model.site(tool_site).id if tool_site is not None else None
    pos = np.empty((len(qs), len(frames), 3))
    rot = np.empty((len(qs), 3, 3))
    for i, q in enumerate(qs):
        data.qpos[:] = model.qpos0
        data.qpos[adr] = q
        mujoco.mj_kinematics(model, data)
        Rb, pb = data.xmat[base_id].reshape(3, 3), data.xpos[base_id]
        p = data.xpos[bodies].copy()
        R = data.xmat[bodies[-1]].reshape(3, 3)
        if site is not None:
            p[-1], R = data.site_xpos[site], data.site_xmat[site].reshape(3, 3)
        pos[i] = (p - pb) @ Rb                      # Rb^T (p - pb), row-wise
        rot[i] = Rb.T @ R
    return pos, rot


def stack_fk(spec, qs: np.ndarray):
    """The stack's FK (float64, batched): joint-frame origins and tool point (N, dof + 1, 3),
    tool pose (N, 4, 4)."""
    return spec.link_positions(qs), spec.tool_pose(qs)


def fk_errors(spec, model, qs, base, tool_site=None) -> dict:
    links, T = stack_fk(spec, qs)
    frames = (*spec.joint_frames, spec.tool_frame)
    pos, rot = mujoco_fk(model, qs, spec.joint_names, frames, base, tool_site)
    return {"tool_position": float(np.abs(T[:, :3, 3] - pos[:, -1]).max()),
            "tool_point_link_positions": float(np.abs(links[:, -1] - pos[:, -1]).max()),
            "joint_frames": float(np.abs(links[:, :-1] - pos[:, :-1]).max()),
            "tool_rotation": float(np.abs(T[:, :3, :3] - rot).max())}


def report(label: str, err: dict) -> str:
    line = (f"FK max error {label} over {N_CONFIGS} configs: tool position {err['tool_position']:.3e} m, "
            f"joint frames {err['joint_frames']:.3e} m, tool rotation {err['tool_rotation']:.3e}")
    print("\n" + line)
    return line


def assert_fk_agrees(err: dict, label: str) -> None:
    assert err["tool_position"] < FK_TOL, f"{label}: tool position differs by {err['tool_position']:.3e} m"
    assert err["tool_point_link_positions"] < FK_TOL, \
        f"{label}: link_positions' tool point differs by {err['tool_point_link_positions']:.3e} m"
    assert err["joint_frames"] < FK_TOL, f"{label}: joint frame origins differ by {err['joint_frames']:.3e} m"
    assert err["tool_rotation"] < FK_TOL, f"{label}: tool rotation differs by {err['tool_rotation']:.3e}"


def show(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["robot", "show", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def quat_matrix(q_xyzw) -> np.ndarray:
    x, y, z, w = q_xyzw
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rpy_matrix(r, p, y) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def check_pose_entry(entry: dict, T: np.ndarray, what: str) -> None:
    """The JSON's pose equals ArmSpec's T: position and matrix within 1e-9; the quaternion and
    roll-pitch-yaw within ROT_REPR_TOL, because ArmSpec's rotation is not a rotation to better
    than ~1e-8 (pytorch_kinematics keeps the URDF's origins in float32: Panda's hand frame,
    turned by -pi/4, gives |R^T R - I| up to 3.4e-8) while a quaternion is one exactly."""
    assert np.abs(np.array(entry["position"]) - T[:3, 3]).max() < POSE_TOL, f"{what}: position"
    assert np.abs(np.array(entry["matrix"]) - T).max() < POSE_TOL, f"{what}: matrix"
    q = np.array(entry["quaternion_xyzw"])
    assert abs(np.linalg.norm(q) - 1) < POSE_TOL and q[3] >= 0, f"{what}: quaternion {q} not unit with w >= 0"
    assert np.abs(quat_matrix(q) - T[:3, :3]).max() < ROT_REPR_TOL, f"{what}: quaternion"
    assert np.abs(rpy_matrix(*entry["rpy"]) - T[:3, :3]).max() < ROT_REPR_TOL, f"{what}: rpy"


# ----------------------------------------------------------------- a. third-party URDFs load
def test_third_party_loads_with_mesh_fallback(third_party):
    key, path, spec = third_party
    print(f"\nexample-robot-data {erd_version()}: {key} = {path}")
    assert spec.tool_frame == THIRD_PARTY[key][1]
    assert spec.dof == {"ur5": 6, "panda": 7}[key]
    mesh_links = [w for w in spec.warnings if "mesh collision geometry" in w and "segment to the next joint" in w]
    assert mesh_links, f"{key}: no warning about mesh collision geometry; warnings: {list(spec.warnings)}"
    fallback = {re.match(r"link (\S+):", w).group(1) for w in mesh_links}
    # each of those links got exactly the fallback volume: the segment from its frame, the stated radius
    for link in fallback:
        caps = [c for c in spec.capsules if c.link == link]
        assert len(caps) == 1 and np.allclose(caps[0].a, 0.0), f"{key}: {link} volumes {caps}"
        assert caps[0].radius == pytest.approx(0.05), f"{key}: {link} radius {caps[0].radius}"
    # every moving chain link's collision is a mesh in both URDFs
    assert set(spec.joint_frames) <= fallback, f"{key}: links without the fallback: {set(spec.joint_frames) - fallback}"
    # a URDF has no acceleration or jerk limits: the loader says it uses its defaults
    for n in spec.joint_names:
        assert any(w.startswith(f"{n}: no acceleration limit") for w in spec.warnings), n
        assert any(w.startswith(f"{n}: no jerk limit") for w in spec.warnings), n


def test_third_party_capsules_at(third_party):
    """Volumes of links fixed beside the chain (UR5's ee_link) ride on their chain link; links on
    joints of their own (Panda's fingers) are named in a warning, not silently dropped."""
    key, _, spec = third_party
    a, b, r = spec.capsules_at(spec.home)
    assert a.shape == b.shape == (len(spec.capsules), 3) and np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    chain_links = set(spec.joint_frames) | {spec.tool_frame}
    assert {c.link for c in spec.capsules} <= chain_links | {r["child"] for r in spec.chain}
    if key == "panda":
        assert any("panda_finger_joint1" in w and "not checked" in w for w in spec.warnings), spec.warnings


# ----------------------------------------------------------------- b. FK vs MuJoCo (third-party)
def test_third_party_fk_matches_mujoco(third_party):
    key, path, spec = third_party
    with open(path) as f:
        urdf = f.read()
    assert spec.urdf == urdf
    model = mujoco.MjModel.from_xml_string(mujoco_urdf(urdf))
    qs = random_configs(spec, N_CONFIGS)
    err = fk_errors(spec, model, qs, base=spec.base_frame)
    report(f"{key} ({os.path.basename(path)}, {spec.base_frame} -> {spec.tool_frame}) stack vs MuJoCo", err)
    assert_fk_agrees(err, key)


def test_fk_comparison_catches_a_1mm_change(third_party):
    """The MuJoCo side reads the URDF text: move one joint origin by 1 mm there and the
    comparison must see it (it compares two computations, not one with itself)."""
    key, path, spec = third_party
    with open(path) as f:
        root = ET.fromstring(f.read().encode())
    j = next(j for j in root.findall("joint") if j.get("name") == spec.joint_names[2])
    o = j.find("origin")
    xyz = [float(v) for v in o.get("xyz").split()]
    xyz[0] += 0.001
    o.set("xyz", " ".join(repr(v) for v in xyz))
    model = mujoco.MjModel.from_xml_string(mujoco_urdf(ET.tostring(root, encoding="unicode")))
    err = fk_errors(spec, model, random_configs(spec, 50), base=spec.base_frame)
    assert err["tool_position"] > 5e-4, f"{key}: a 1 mm change went unseen ({err['tool_position']:.3e} m)"


# ----------------------------------------------------------------- c. FK: stack, simulator, gate
@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_shipped_fk_stack_simulator_gate(robot, tmp_path, monkeypatch):
    from ami_ros.sim.scene import build_model

    monkeypatch.chdir(tmp_path)       # MuJoCo logs build_model's attach warning to ./MUJOCO_LOG.TXT

    assert robot in shipped_robots()
    spec = load_arm(robot)
    model = build_model(spec)
    qs = random_configs(spec, N_CONFIGS)
    # the gate: ArmSpec in float64 (numpy in, numpy out)
    assert spec.tool_pose(qs[:1]).dtype == np.float64
    # the simulator's scene: the arm's base at the world origin, the tool site named after the tool frame
    err = fk_errors(spec, model, qs, base=None, tool_site=spec.tool_frame)
    report(f"{robot} ({spec.base_frame} -> {spec.tool_frame}) stack/gate vs simulator scene", err)
    assert_fk_agrees(err, robot)


# ----------------------------------------------------------------- d. ami-ros robot show
@pytest.mark.parametrize("robot", ["ami_arm6", "ur5e", "panda"])
def test_show_shipped(robot, capsys):
    rc, out, err = show(["--robot", robot, "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    spec = load_arm(robot)
    assert doc["name"] == spec.name and doc["kinematics_hash"] == spec.kinematics_hash
    assert (doc["base_frame"], doc["tool_frame"]) == (spec.base_frame, spec.tool_frame)
    assert [j["name"] for j in doc["joints"]] == list(spec.joint_names)
    assert doc["tool_pose"]["q"] is None
    check_pose_entry(doc["tool_pose"]["home"], spec.tool_pose(spec.home), f"{robot} home")
    assert doc["tool_pose"]["home"]["q"] == spec.home.tolist()
    check_pose_entry(doc["tool_pose"]["zero"], spec.tool_pose(spec.clip(np.zeros(spec.dof))), f"{robot} zero")


def test_show_default_robot_text(capsys):
    rc, out, err = show([], capsys)
    assert rc == 0, err
    spec = load_arm(None)
    for text in (spec.name, spec.kinematics_hash, spec.tool_frame, *spec.joint_names, "tool pose", "home"):
        assert text in out, f"{text!r} missing from the text output"


def test_show_third_party(third_party, capsys):
    key, path, spec = third_party
    rc, out, err = show(["--robot", path, "--tool-frame", spec.tool_frame, "--json"], capsys)
    assert rc == 0, err
    assert err == "", f"stderr not empty: {err[:300]}"
    doc = json.loads(out)                  # one JSON document, nothing else on stdout
    assert doc["kinematics_hash"] == spec.kinematics_hash and doc["source"] == os.path.abspath(path)
    check_pose_entry(doc["tool_pose"]["home"], spec.tool_pose(spec.home), f"{key} home")
    assert any("mesh collision geometry" in w for w in doc["warnings"])
    assert len(doc["link_volumes"]) == len(spec.capsules)
    # no home given: zeros clipped into the limits (Panda's joint 4 has no zero in its range)
    clipped = [n for n, lo, hi in zip(spec.joint_names, spec.q_min, spec.q_max) if not lo <= 0 <= hi]
    assert doc["tool_pose"]["zero"]["clipped"] == clipped
    if key == "panda":
        assert clipped == ["panda_joint4"]
    # --q: the pose there
    q = random_configs(spec, 1, seed=7)[0]
    rc, out, err = show(["--robot", path, "--tool-frame", spec.tool_frame, "--json",
                         "--q=" + ",".join(repr(float(v)) for v in q)], capsys)
    assert rc == 0, err
    check_pose_entry(json.loads(out)["tool_pose"]["q"], spec.tool_pose(q), f"{key} --q")


def test_show_missing_file(tmp_path, capsys):
    missing = str(tmp_path / "no_such_robot.urdf")
    rc, out, err = show(["--robot", missing, "--json"], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and "no_such_robot.urdf" in err and "no such file" in err, err


def test_a_folder_named_as_a_shipped_arm_does_not_hide_it(tmp_path, monkeypatch):
    (tmp_path / "ur5e").mkdir()                # e.g. the UR5e's recordings, where the command runs
    monkeypatch.chdir(tmp_path)
    shipped = load_arm(os.path.join(share_dir(), "robots", "ur5e", "robot.yaml"))
    assert load_arm("ur5e").kinematics_hash == shipped.kinematics_hash


def test_show_widening_limits(tmp_path, capsys):
    spec = load_arm("ur5e")
    joint = spec.joint_names[0]
    wider = spec.v_max[0] * 2
    f = tmp_path / "wide_limits.yaml"
    f.write_text(f"joint_limits:\n  {joint}:\n    has_velocity_limits: true\n    max_velocity: {wider}\n")
    rc, out, err = show(["--robot", "ur5e", "--limits", str(f)], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and joint in err and "widens the URDF" in err, err
    # the same file tightening instead is accepted
    f.write_text(f"joint_limits:\n  {joint}:\n    has_velocity_limits: true\n    max_velocity: {spec.v_max[0] / 2}\n")
    rc, out, err = show(["--robot", "ur5e", "--limits", str(f), "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["joints"][0]["max_velocity"] == pytest.approx(spec.v_max[0] / 2)


@pytest.mark.parametrize("q, reason", [
    ("0,0,0", "has 6 joints"),
    ("0,0,0,0,0,0,0", "got 7 values"),
    ("0,0,zero,0,0,0", "not a number"),
    ("0,0,0,0,0,nan", "finite"),
    ("0,0,3.5,0,0,0", "elbow_joint 3.5 not in"),
])
def test_show_bad_q(q, reason, capsys):
    rc, out, err = show(["--robot", "ur5e", "--json", f"--q={q}"], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("error: --q") and reason in err, err


def test_a_model_trained_on_another_arm_is_refused_naming_both():
    """The shipped model knows ami_arm6: loading it for the UR5e-geometry arm (same joint names)
    is refused, and the message names both arms; for its own arm it loads."""
    from ami_ros.core.model_io import ModelError, load_model
    from ami_ros.nodes.model_path import resolve_model_path

    folder = resolve_model_path("")
    ur5e = load_arm("ur5e")
    with pytest.raises(ModelError, match="ami_arm6.*ur5e_geometry"):
        load_model(folder, "onnx", arm=ur5e)
    assert load_model(folder, "onnx", arm=load_arm()).joint_names == load_arm().joint_names


def test_a_robot_yaml_places_the_simulators_camera(tmp_path):
    """ur5e's robot.yaml moves the scene camera back (the bigger arm in view); ami_arm6 keeps the
    default; a malformed sim_camera is refused with the reason."""
    from ami_ros.core.arm import RobotError, share_dir
    from ami_ros.sim.scene import CAMERA, build_model

    cam = build_model(load_arm("ur5e")).camera("scene")
    np.testing.assert_allclose(cam.pos, load_arm("ur5e").sim_camera["pos"])
    np.testing.assert_allclose(build_model(load_arm()).camera("scene").pos, CAMERA[1])
    robot = tmp_path / "robot.yaml"
    robot.write_text(f"urdf: {share_dir()}/robots/ur5e/ur5e.urdf\nsim_camera: {{pos: [1, 2]}}\n")
    with pytest.raises(RobotError, match="sim_camera"):
        load_arm(str(robot))


_LIMIT = '<limit lower="-1" upper="1" velocity="1" effort="1"/>'


@pytest.mark.parametrize("urdf, kw, match", [
    ("<robot name='x'><link name='a'/></robot", {}, "not a readable URDF"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='fixed'><parent link='a'/>"
     "<child link='b'/></joint></robot>", {}, "no movable joint"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='floating'><parent link='a'/>"
     "<child link='b'/></joint></robot>", {}, "not supported"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'><parent link='a'/>"
     f"<child link='b'/><axis xyz='0 0 1'/>{_LIMIT}</joint></robot>", {"tool_frame": "nope"}, "not a link"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'><parent link='a'/>"
     "<child link='b'/><axis xyz='0 0 1'/></joint></robot>", {}, "declared continuous"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'><parent link='a'/>"
     f"<child link='b'/><axis xyz='0 0 1'/>{_LIMIT}</joint></robot>", {"home": [0.0, 0.0]}, "home needs 1"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'><parent link='a'/>"
     f"<child link='b'/><axis xyz='0 0 1'/>{_LIMIT}</joint></robot>", {"home": [2.0]}, "outside the joint limits"),
])
def test_unusable_urdfs_are_refused_with_the_reason(urdf, kw, match):
    from ami_ros.core.arm import RobotError, arm_from_urdf

    with pytest.raises(RobotError, match=match):
        arm_from_urdf(urdf, **kw)

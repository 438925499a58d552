"""The robot descriptions shipped under robots/: ur5e_geometry and panda_geometry.

Checks, per robot:
  a. the URDF parses with pytorch_kinematics (joint names and order) and compiles with MuJoCo;
     the geometry follows the conventions (one cylinder per link along its segment, a colour
     per link, inertials where there is geometry);
  b. pytorch_kinematics' tool-frame FK (float64) equals an independent DH implementation of the
     maker's published table (standard DH for the UR5e, Craig's modified DH for the Panda) within
     1e-9 m and 1e-9 in rotation, over 1,000 random configurations inside the limits; a constant
     flange rotation, taken once at q = 0, is allowed; a 1 mm change to the URDF is caught.
     pytorch_kinematics 0.10's URDF import stores every origin in float32 (so its FK keeps a few
     1e-8 m of rounding even after .to(float64)); this check builds the chain with the same
     importer but the origins converted in float64 (see chain_float64), and reports the stock
     import's error separately (it must stay below 1e-6 m);
  c. MuJoCo's FK of the tool body equals pytorch_kinematics' within 1e-6 over the same
     configurations;
  d. at robot.yaml's home the tool is above the table (z > 0.1) in front of the base (x > 0.2),
     and every collision cylinder's centre is above the table top (z > 0);
  e. joint_limits.yaml (with `!degrees` tags) only tightens the URDF's limits.

MuJoCo needs ``<mujoco><compiler discardvisual="false" fusestatic="false"/></mujoco>`` inside
<robot> to keep the tool frame as a body; the shipped URDFs stay plain and this test injects it
(as the simulator must for any URDF it is given).
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from unittest import mock

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
mujoco = pytest.importorskip("mujoco")
pk = pytest.importorskip("pytorch_kinematics")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
N_CONFIGS = 1000
DH_TOL = 1e-9      # m (and unitless for rotation-matrix entries)
MJ_TOL = 1e-6
PI = math.pi

# ----------------------------------------------------------------- published tables
# UR5e: Universal Robots, "Parameters for calculations of kinematics and dynamics" (standard DH).
UR5E_DH = dict(d=[0.1625, 0, 0, 0.1333, 0.0997, 0.0996],
               a=[0, -0.425, -0.3922, 0, 0, 0],
               alpha=[PI / 2, 0, 0, PI / 2, -PI / 2, 0])
# Panda: Franka FCI documentation, "Robot and interface specifications" (Craig's modified DH);
# rows J1..J7 and the flange, each Rx(alpha) Tx(a) Rz(theta) Tz(d).
PANDA_MDH = dict(a=[0, 0, 0, 0.0825, -0.0825, 0, 0.088, 0],
                 d=[0.333, 0, 0.316, 0, 0.384, 0, 0, 0.107],
                 alpha=[0, -PI / 2, PI / 2, PI / 2, -PI / 2, PI / 2, PI / 2, 0])


def dh_standard(q, tab):
    """(N, 4, 4): prod_i Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)."""
    q = np.atleast_2d(q)
    T = np.tile(np.eye(4), (len(q), 1, 1))
    for i, (d, a, al) in enumerate(zip(tab["d"], tab["a"], tab["alpha"])):
        ct, st, ca, sa = np.cos(q[:, i]), np.sin(q[:, i]), math.cos(al), math.sin(al)
        A = np.zeros((len(q), 4, 4))
        A[:, 0, 0], A[:, 0, 1], A[:, 0, 2], A[:, 0, 3] = ct, -st * ca, st * sa, a * ct
        A[:, 1, 0], A[:, 1, 1], A[:, 1, 2], A[:, 1, 3] = st, ct * ca, -ct * sa, a * st
        A[:, 2, 1], A[:, 2, 2], A[:, 2, 3] = sa, ca, d
        A[:, 3, 3] = 1.0
        T = T @ A
    return T


def dh_modified(q, tab):
    """(N, 4, 4): prod_i Rx(alpha_i) Tx(a_i) Rz(q_i) Tz(d_i); the flange row has q = 0."""
    q = np.atleast_2d(q)
    q = np.concatenate([q, np.zeros((len(q), len(tab["d"]) - q.shape[1]))], axis=1)
    T = np.tile(np.eye(4), (len(q), 1, 1))
    for i, (d, a, al) in enumerate(zip(tab["d"], tab["a"], tab["alpha"])):
        ct, st, ca, sa = np.cos(q[:, i]), np.sin(q[:, i]), math.cos(al), math.sin(al)
        A = np.zeros((len(q), 4, 4))
        A[:, 0, 0], A[:, 0, 1], A[:, 0, 3] = ct, -st, a
        A[:, 1, 0], A[:, 1, 1], A[:, 1, 2], A[:, 1, 3] = st * ca, ct * ca, -sa, -sa * d
        A[:, 2, 0], A[:, 2, 1], A[:, 2, 2], A[:, 2, 3] = st * sa, ct * sa, ca, ca * d
        A[:, 3, 3] = 1.0
        T = T @ A
    return T


ROBOTS = {
    "ur5e": dict(
        folder="robots/ur5e", name="ur5e_geometry", base="base_link", tool="tool0",
        joints=["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
                "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"],
        links=["base_link", "shoulder_link", "upper_arm_link", "forearm_link",
               "wrist_1_link", "wrist_2_link", "wrist_3_link", "tool0"],
        dh=lambda q: dh_standard(q, UR5E_DH),
        perturb=('xyz="0 0 0.1333"', 'xyz="0 0 0.1343"'),    # d4 + 1 mm
        acc_jerk_published=False),
    "panda": dict(
        folder="robots/panda", name="panda_geometry", base="panda_link0", tool="panda_link8",
        joints=[f"panda_joint{i}" for i in range(1, 8)],
        links=[f"panda_link{i}" for i in range(9)],
        dh=lambda q: dh_modified(q, PANDA_MDH),
        perturb=('xyz="0 0 0.384"', 'xyz="0 0 0.385"'),      # d5 + 1 mm
        acc_jerk_published=True),
}


# ----------------------------------------------------------------- helpers
class LimitsLoader(yaml.SafeLoader):
    """SafeLoader that reads `!degrees <number>` as radians (as vendors' limit files use it)."""


LimitsLoader.add_constructor("!degrees", lambda loader, node: math.radians(float(loader.construct_scalar(node))))


def rpy_matrix(r, p, y):
    """URDF rpy: R = Rz(y) Ry(p) Rx(r)."""
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def origin_of(el):
    o = el.find("origin")
    xyz = np.array([float(v) for v in (o.get("xyz", "0 0 0") if o is not None else "0 0 0").split()])
    rpy = [float(v) for v in (o.get("rpy", "0 0 0") if o is not None else "0 0 0").split()]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rpy_matrix(*rpy), xyz
    return T


class Robot:
    def __init__(self, key):
        self.key, self.cfg = key, ROBOTS[key]
        folder = os.path.join(ROOT, self.cfg["folder"])
        with open(os.path.join(folder, "robot.yaml")) as f:
            self.meta = yaml.safe_load(f)
        with open(os.path.join(folder, self.meta["urdf"])) as f:
            self.urdf = f.read()
        with open(os.path.join(folder, self.meta["joint_limits"])) as f:
            self.limits_text = f.read()
        self.limits = yaml.load(self.limits_text, Loader=LimitsLoader)["joint_limits"]
        self.xml = ET.fromstring(self.urdf)
        self.joint_el = {j.get("name"): j for j in self.xml.findall("joint")}
        self.link_el = {l.get("name"): l for l in self.xml.findall("link")}
        # the stock import (float32 origins) and the float64 one (see chain_float64)
        self.chain32 = pk.build_serial_chain_from_urdf(self.urdf, self.meta["tool_frame"]).to(dtype=torch.float64)
        self.chain = chain_float64(self.urdf, self.meta["tool_frame"])
        self.names = self.chain.get_joint_parameter_names()
        lim = [self.joint_el[n].find("limit") for n in self.names]
        self.lower = np.array([float(l.get("lower")) for l in lim])
        self.upper = np.array([float(l.get("upper")) for l in lim])

    def pk_fk(self, q):
        """(N, 4, 4) tool frames in the base frame (float64 chain)."""
        return self.chain.forward_kinematics(torch.as_tensor(np.atleast_2d(q), dtype=torch.float64)).get_matrix().numpy()

    def mujoco_model(self):
        root = ET.fromstring(self.urdf)
        mj = ET.Element("mujoco")
        ET.SubElement(mj, "compiler", discardvisual="false", fusestatic="false")
        root.insert(0, mj)
        return mujoco.MjModel.from_xml_string(ET.tostring(root, encoding="unicode"))

    def configs(self, n=N_CONFIGS, seed=0):
        return np.random.default_rng(seed).uniform(self.lower, self.upper, size=(n, len(self.names)))


def chain_float64(urdf_text: str, tool: str):
    """pytorch_kinematics' URDF import with the joint and link origins converted in float64.

    pytorch_kinematics 0.10 converts each URDF <origin> with a float32 rpy tensor and a float32
    Transform3d (urdf._convert_transform), and a Chain's identity offsets default to float32,
    so .to(float64) afterwards keeps the float32 rounding (a few 1e-8 m on these arms). Here the same
    parser, tree builder and FK run with those two float32 choices switched to float64."""
    from pytorch_kinematics import chain as pk_chain, transforms as pk_tf, urdf as pk_urdf

    def convert(origin):
        if origin is None:
            return pk_tf.Transform3d(dtype=torch.float64)
        rpy = torch.tensor(origin.rpy, dtype=torch.float64)
        return pk_tf.Transform3d(rot=pk_tf.quaternion_from_euler(rpy, "sxyz"), pos=origin.xyz, dtype=torch.float64)

    with mock.patch.object(pk_urdf, "_convert_transform", convert), \
            mock.patch.object(pk_chain.Chain.__init__, "__defaults__", (torch.float64, "cpu")):
        chain = pk.build_serial_chain_from_urdf(urdf_text, tool)
    assert chain.dtype == torch.float64 and chain._static_offsets.dtype == torch.float64
    return chain


_CACHE: dict = {}


@pytest.fixture(params=sorted(ROBOTS), ids=sorted(ROBOTS))
def robot(request) -> Robot:
    if request.param not in _CACHE:
        _CACHE[request.param] = Robot(request.param)
    return _CACHE[request.param]


def fk_errors(T_a, T_b):
    """Largest position distance (m) and largest rotation-matrix entry difference."""
    return (float(np.max(np.linalg.norm(T_a[:, :3, 3] - T_b[:, :3, 3], axis=1))),
            float(np.max(np.abs(T_a[:, :3, :3] - T_b[:, :3, :3]))))


def dh_comparison(robot: Robot, urdf_text: str | None = None, chain=None):
    """(pos_err, rot_err, flange offset) of pytorch_kinematics FK against the published DH table."""
    if chain is None:
        chain = robot.chain if urdf_text is None else chain_float64(urdf_text, robot.meta["tool_frame"])
    q = robot.configs()

    def fk(qq):
        return chain.forward_kinematics(torch.as_tensor(qq, dtype=torch.float64)).get_matrix().numpy()

    zero = np.zeros((1, len(robot.names)))
    offset = np.linalg.inv(robot.cfg["dh"](zero)[0]) @ fk(zero)[0]     # tool frame in the DH end frame
    pos, rot = fk_errors(fk(q), robot.cfg["dh"](q) @ offset)
    return pos, rot, offset


# ----------------------------------------------------------------- a. parsing, conventions
def test_parses_and_compiles(robot):
    cfg = robot.cfg
    assert robot.meta["name"] == cfg["name"] == robot.xml.get("name")
    assert robot.meta["base_frame"] == cfg["base"] and robot.meta["tool_frame"] == cfg["tool"]
    assert robot.chain32.get_joint_parameter_names() == robot.names == cfg["joints"]
    assert sorted(robot.link_el) == sorted(cfg["links"])
    assert robot.chain32.get_frame_names(exclude_fixed=False) == cfg["links"]     # base first, tool last
    lo, hi = robot.chain32.get_joint_limits()
    np.testing.assert_allclose(np.stack([lo, hi], axis=1), np.stack([robot.lower, robot.upper], axis=1), atol=1e-12)

    model = robot.mujoco_model()
    bodies = [model.body(i).name for i in range(model.nbody)]
    assert set(cfg["links"]) <= set(bodies), bodies
    assert [model.joint(j).name for j in range(model.njnt)] == cfg["joints"]
    np.testing.assert_allclose(model.jnt_range, np.stack([robot.lower, robot.upper], axis=1), atol=1e-12)
    assert model.jnt_limited.all()


def test_geometry_conventions(robot):
    cfg = robot.cfg
    tool, base = cfg["tool"], cfg["base"]
    colours = {}
    for name in cfg["links"]:
        link = robot.link_el[name]
        cols, vis, inert = link.findall("collision"), link.findall("visual"), link.find("inertial")
        if name == tool:  # nothing, or a tool stand-in: one sphere centred on the tool frame, drawn as it collides
            assert inert is None and len(cols) == len(vis) <= 1, f"{name}: nothing or one stand-in sphere"
            if cols:
                sph, vsph = cols[0].find("geometry/sphere"), vis[0].find("geometry/sphere")
                assert sph is not None and vsph is not None and sph.get("radius") == vsph.get("radius")
                assert np.allclose(origin_of(cols[0]), np.eye(4)) and np.allclose(origin_of(vis[0]), np.eye(4))
                colours[name] = tuple(float(v) for v in vis[0].find("material/color").get("rgba").split())
            continue
        assert len(cols) == 1 and len(vis) == 1, f"{name}: one collision and one visual cylinder"
        cyl = cols[0].find("geometry/cylinder")
        assert cyl is not None, f"{name}: collision is not a cylinder"
        r, L = float(cyl.get("radius")), float(cyl.get("length"))
        assert 0.04 <= r <= 0.09 and L > 0, f"{name}: radius {r}, length {L}"
        vcyl = vis[0].find("geometry/cylinder")
        assert vcyl is not None and (vcyl.get("radius"), vcyl.get("length")) == (cyl.get("radius"), cyl.get("length"))
        assert np.allclose(origin_of(vis[0]), origin_of(cols[0]))
        colours[name] = tuple(float(v) for v in vis[0].find("material/color").get("rgba").split())
        # inertial: positive mass, at the cylinder's centre, the cylinder's diagonal inertia
        T_c = origin_of(cols[0])
        m = float(inert.find("mass").get("value"))
        ine = {k: float(v) for k, v in inert.find("inertia").attrib.items()}
        assert m > 0 and np.allclose(origin_of(inert), T_c)
        assert ine["ixy"] == ine["ixz"] == ine["iyz"] == 0
        np.testing.assert_allclose([ine["ixx"], ine["iyy"], ine["izz"]],
                                   [m * (3 * r * r + L * L) / 12] * 2 + [m * r * r / 2], rtol=1e-4)
        if name == base:
            continue
        # a moving link's cylinder runs from its joint origin to the next joint origin
        nxt = [j for j in robot.joint_el.values() if j.find("parent").get("link") == name]
        assert len(nxt) == 1
        seg = origin_of(nxt[0])[:3, 3]
        np.testing.assert_allclose(T_c[:3, 3], seg / 2, atol=1e-12, err_msg=name)
        assert abs(L - np.linalg.norm(seg)) < 1e-9, name
        assert np.linalg.norm(np.cross(T_c[:3, 2], seg)) < 1e-9 * max(1.0, np.linalg.norm(seg)), name
    assert len(set(colours.values())) == len(colours), f"colours not distinct: {colours}"
    # MuJoCo keeps those colours
    model = robot.mujoco_model()
    for g in range(model.ngeom):
        body = model.body(model.geom_bodyid[g]).name
        np.testing.assert_allclose(model.geom_rgba[g], colours[body], err_msg=body)


# ----------------------------------------------------------------- b. FK against the DH table
def test_fk_matches_published_dh(robot):
    pos, rot, offset = dh_comparison(robot)
    print(f"\n[{robot.key}] pytorch_kinematics vs DH over {N_CONFIGS} configs: "
          f"max position diff {pos:.3e} m, max rotation diff {rot:.3e}; "
          f"flange offset rotation {np.round(offset[:3, :3], 6).tolist()}")
    assert np.linalg.norm(offset[:3, 3]) < DH_TOL, "the tool frame's origin is not the DH end frame's"
    assert pos < DH_TOL and rot < DH_TOL
    pos32, rot32, _ = dh_comparison(robot, chain=robot.chain32)
    print(f"[{robot.key}] stock pytorch_kinematics import (float32 origins) vs DH: "
          f"max position diff {pos32:.3e} m, max rotation diff {rot32:.3e}")
    assert pos32 < 1e-6 and rot32 < 1e-6


def test_fk_check_catches_a_1mm_change(robot):
    old, new = robot.cfg["perturb"]
    assert robot.urdf.count(old) == 1
    pos, _, _ = dh_comparison(robot, robot.urdf.replace(old, new))
    assert pos > 1e-4


# ----------------------------------------------------------------- c. MuJoCo against pytorch_kinematics
def test_mujoco_fk_matches_pytorch_kinematics(robot):
    model = robot.mujoco_model()
    data = mujoco.MjData(model)
    adr = [model.jnt_qposadr[model.joint(n).id] for n in robot.names]
    tool = model.body(robot.cfg["tool"]).id
    q = robot.configs()
    T_mj = np.tile(np.eye(4), (len(q), 1, 1))
    for k, qk in enumerate(q):
        data.qpos[adr] = qk
        mujoco.mj_kinematics(model, data)
        T_mj[k, :3, :3] = data.xmat[tool].reshape(3, 3)
        T_mj[k, :3, 3] = data.xpos[tool]
    pos, rot = fk_errors(T_mj, robot.pk_fk(q))
    print(f"\n[{robot.key}] MuJoCo vs pytorch_kinematics over {N_CONFIGS} configs: "
          f"max position diff {pos:.3e} m, max rotation diff {rot:.3e}")
    assert pos < MJ_TOL and rot < MJ_TOL


# ----------------------------------------------------------------- d. home pose
def test_home_is_above_the_table_in_front(robot):
    home = np.asarray(robot.meta["home"], dtype=np.float64)
    assert home.shape == (len(robot.names),)
    lo = np.array([robot.limits[n]["min_position"] for n in robot.names])
    hi = np.array([robot.limits[n]["max_position"] for n in robot.names])
    assert np.all((home > lo) & (home < hi)), "home outside joint_limits.yaml"
    tool = robot.pk_fk(home)[0][:3, 3]
    print(f"\n[{robot.key}] home {home.tolist()}: tool at {np.round(tool, 4).tolist()} m")
    assert tool[2] > 0.1 and tool[0] > 0.2, tool
    tf = robot.chain.forward_kinematics(torch.as_tensor(home[None]), end_only=False)
    for name in robot.cfg["links"]:
        col = robot.link_el[name].find("collision")
        if col is None:
            continue
        T_link = tf[name].get_matrix().numpy()[0]
        centre = (T_link @ origin_of(col))[:3, 3]
        assert centre[2] > 0.0, f"{name}: collision centre {centre} below the table top"


# ----------------------------------------------------------------- e. joint_limits.yaml only tightens
def limit_violations(robot: Robot, limits: dict) -> list[str]:
    bad = []
    if sorted(limits) != sorted(robot.names):
        bad.append(f"joints {sorted(limits)} != {sorted(robot.names)}")
    for name in robot.names:
        y, lim = limits.get(name, {}), robot.joint_el[name].find("limit")
        lower, upper = float(lim.get("lower")), float(lim.get("upper"))
        vel, eff = float(lim.get("velocity")), float(lim.get("effort"))
        if not (y.get("has_position_limits") and lower - 1e-12 <= y["min_position"] < y["max_position"] <= upper + 1e-12):
            bad.append(f"{name}: position [{y.get('min_position')}, {y.get('max_position')}] vs URDF [{lower}, {upper}]")
        if not (y.get("has_velocity_limits") and 0 < y["max_velocity"] <= vel + 1e-12):
            bad.append(f"{name}: velocity {y.get('max_velocity')} vs URDF {vel}")
        if not (y.get("has_effort_limits") and 0 < y["max_effort"] <= eff + 1e-12):
            bad.append(f"{name}: effort {y.get('max_effort')} vs URDF {eff}")
        for kind in ("acceleration", "jerk"):
            if robot.cfg["acc_jerk_published"]:
                if not (y.get(f"has_{kind}_limits") is True and y.get(f"max_{kind}", 0) > 0):
                    bad.append(f"{name}: published {kind} limit missing")
            elif y.get(f"has_{kind}_limits") is not False or f"max_{kind}" in y:
                bad.append(f"{name}: {kind} limit given but none is published")
    return bad


def test_joint_limits_yaml_only_tightens(robot):
    assert limit_violations(robot, robot.limits) == []


def test_joint_limits_check_catches_widening(robot):
    import copy
    wide = copy.deepcopy(robot.limits)
    first = robot.names[0]
    wide[first]["max_position"] += 0.01
    assert any("position" in b for b in limit_violations(robot, wide))
    wide = copy.deepcopy(robot.limits)
    wide[robot.names[-1]]["max_velocity"] *= 1.01
    assert any("velocity" in b for b in limit_violations(robot, wide))


def test_ur5e_limits_are_the_published_ones():
    ur = Robot("ur5e") if "ur5e" not in _CACHE else _CACHE["ur5e"]
    assert "!degrees" in ur.limits_text
    lim = ur.limits
    for n in ur.names:
        assert lim[n]["max_velocity"] == pytest.approx(PI, abs=1e-12)           # 180 deg/s
        span = PI if n == "elbow_joint" else 2 * PI                              # +-360 deg, elbow +-180
        assert lim[n]["min_position"] == pytest.approx(-span, abs=1e-12)
        assert lim[n]["max_position"] == pytest.approx(span, abs=1e-12)
    assert [lim[n]["max_effort"] for n in ur.names] == [150.0, 150.0, 150.0, 28.0, 28.0, 28.0]


def test_panda_limits_are_the_published_ones():
    pd = Robot("panda") if "panda" not in _CACHE else _CACHE["panda"]
    col = lambda key: [pd.limits[n][key] for n in pd.names]  # noqa: E731
    assert col("min_position") == [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
    assert col("max_position") == [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
    assert col("max_velocity") == [2.175] * 4 + [2.61] * 3
    assert col("max_acceleration") == [15, 7.5, 10, 12.5, 15, 20, 20]
    assert col("max_jerk") == [7500, 3750, 5000, 6250, 7500, 10000, 10000]
    assert col("max_effort") == [87] * 4 + [12] * 3

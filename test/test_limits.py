"""core.limits: URDF <limit> values merged with a ros2_control joint_limits YAML (no ROS)."""
from __future__ import annotations

import math

import pytest

from ami_ros.core.limits import (DEFAULT_MAX_ACCELERATION_FACTOR, DEFAULT_MAX_JERK_FACTOR, JointLimit,
                                 LimitsError, load_joint_limits, urdf_limit)

UR_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
             "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]

# A UR5e-like URDF, attributes as strings as in the XML; the shoulder pan's values are rounded
# to 6 digits as many vendor URDFs write them.
UR_URDF = {
    "shoulder_pan_joint": urdf_limit("revolute", "-6.28319", "6.28319", "3.14159", "150.0"),
    "shoulder_lift_joint": urdf_limit("revolute", "-6.283185307179586", "6.283185307179586",
                                      "3.141592653589793", "150.0"),
    "elbow_joint": urdf_limit("revolute", "-3.141592653589793", "3.141592653589793", "3.141592653589793", "150.0"),
    "wrist_1_joint": urdf_limit("revolute", "-6.283185307179586", "6.283185307179586",
                                "3.141592653589793", "28.0"),
    "wrist_2_joint": urdf_limit("revolute", "-6.283185307179586", "6.283185307179586",
                                "3.141592653589793", "28.0"),
    "wrist_3_joint": urdf_limit("revolute", "-6.283185307179586", "6.283185307179586",
                                "3.141592653589793", "28.0"),
}


def _ur_joint(name, effort, pos_deg, extra=""):
    return f"""
  {name}:
    # acceleration limits are not publicly available
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: {effort}
    max_position: !degrees  {pos_deg}
    max_velocity: !degrees  180.0
    min_position: !degrees -{pos_deg}{extra}"""


UR_YAML = "joint_limits:" + "".join([
    _ur_joint("shoulder_pan_joint", 150.0, 360.0),
    _ur_joint("shoulder_lift_joint", 150.0, 360.0),
    _ur_joint("elbow_joint", 150.0, 180.0),
    # a MoveIt-style disabled value: ignored, not refused as non-positive
    _ur_joint("wrist_1_joint", 28.0, 360.0, extra="\n    max_acceleration: 0"),
    _ur_joint("wrist_2_joint", 28.0, 360.0),
    _ur_joint("wrist_3_joint", 28.0, 360.0),
]) + "\n"


def one(kind="revolute", lower="-1.0", upper="1.0", velocity="2.0", effort="10.0"):
    return {"j": urdf_limit(kind, lower, upper, velocity, effort)}


def load_one(yaml_text, urdf=None, **kw):
    limits, warnings = load_joint_limits(yaml_text, ["j"], urdf or one(), **kw)
    return limits["j"], warnings


# ------------------------------------------------------------------ vendor file, defaults
def test_ur_vendor_yaml_with_degrees_loads_with_stated_defaults_and_warnings():
    limits, warnings = load_joint_limits(UR_YAML, UR_JOINTS, UR_URDF, where="ur5e/joint_limits.yaml")
    assert list(limits) == UR_JOINTS
    pan = limits["shoulder_pan_joint"]
    assert isinstance(pan, JointLimit)
    # !degrees 360 is tighter than the URDF's rounded 6.28319: the YAML's value
    assert pan.min_position == pytest.approx(-2 * math.pi, abs=1e-12)
    assert pan.max_position == pytest.approx(2 * math.pi, abs=1e-12)
    # !degrees 180 = 3.1415927 is above the URDF's 3.14159 only by rounding: accepted, URDF's kept
    assert pan.max_velocity == 3.14159
    assert limits["elbow_joint"].max_position == pytest.approx(math.pi, abs=1e-12)
    assert limits["wrist_3_joint"].max_effort == 28.0
    for name in UR_JOINTS:
        lim = limits[name]
        assert lim.max_acceleration == pytest.approx(DEFAULT_MAX_ACCELERATION_FACTOR * lim.max_velocity)
        assert lim.max_jerk == pytest.approx(DEFAULT_MAX_JERK_FACTOR * lim.max_acceleration)
    assert DEFAULT_MAX_ACCELERATION_FACTOR == 1.0 and DEFAULT_MAX_JERK_FACTOR == 10.0
    assert limits["wrist_1_joint"].max_acceleration == pytest.approx(math.pi)  # max_acceleration: 0 ignored
    assert "wrist_3_joint: no acceleration limit; using 3.142 rad/s^2 (1 x max_velocity per s)" in warnings
    assert "wrist_3_joint: no jerk limit; using 31.42 rad/s^3 (10 x max_acceleration per s)" in warnings
    assert len(warnings) == 12  # acceleration and jerk for each joint, nothing else


def test_urdf_only_and_bare_mapping():
    lim, warnings = load_one(None)
    assert (lim.min_position, lim.max_position, lim.max_velocity, lim.max_effort) == (-1.0, 1.0, 2.0, 10.0)
    assert (lim.max_acceleration, lim.max_jerk) == (2.0, 20.0)
    assert len(warnings) == 2
    lim, warnings = load_one({"j": {"has_acceleration_limits": True, "max_acceleration": 4.0,
                                    "has_jerk_limits": True, "max_jerk": 50.0}})
    assert (lim.max_acceleration, lim.max_jerk) == (4.0, 50.0)
    assert warnings == []


def test_file_path_source_names_the_file(tmp_path):
    path = tmp_path / "joint_limits.yaml"
    path.write_text("joint_limits:\n  j: {has_velocity_limits: true, max_velocity: 1.5}\n")
    lim, _ = load_one(str(path))
    assert lim.max_velocity == 1.5
    path.write_text("joint_limits:\n  j: {has_velocity_limits: true, max_velocity: 2.5}\n")
    with pytest.raises(LimitsError, match=rf"j: max_velocity 2.5 in {path} widens the URDF's 2$"):
        load_one(path)
    with pytest.raises(LimitsError, match="no_such.yaml: cannot read"):
        load_one(str(tmp_path / "no_such.yaml"))


# ------------------------------------------------------------------ document forms
def test_ros_parameters_wrapper_any_node_name():
    text = """
controller_manager:
  ros__parameters:
    update_rate: 500
    joint_limits:
      j:
        has_velocity_limits: true
        max_velocity: 1.25
"""
    lim, _ = load_one(text)
    assert lim.max_velocity == 1.25
    lim, _ = load_one(text.replace("controller_manager", "/**"))
    assert lim.max_velocity == 1.25
    # namespaced node, dotted parameter names
    dotted = """
arm:
  my_node:
    ros__parameters:
      joint_limits.j.has_velocity_limits: true
      joint_limits.j.max_velocity: 0.75
"""
    lim, _ = load_one(dotted)
    assert lim.max_velocity == 0.75
    two = text + text.replace("controller_manager", "other_node")
    with pytest.raises(LimitsError, match=r"more than one node.*controller_manager.*other_node"):
        load_one(two)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("key, value, urdf_value", [
    ("max_velocity", "3.2", "3.14"),
    ("max_effort", "12.5", "10"),
])
def test_widening_velocity_or_effort_refused_with_reason(key, value, urdf_value):
    flag = {"max_velocity": "has_velocity_limits", "max_effort": "has_effort_limits"}[key]
    text = f"joint_limits:\n  j: {{{flag}: true, {key}: {value}}}\n"
    with pytest.raises(LimitsError) as e:
        load_one(text, urdf=one(velocity="3.14"), where="vendor.yaml")
    assert str(e.value) == f"j: {key} {value} in vendor.yaml widens the URDF's {urdf_value}"
    # equal is fine
    lim, _ = load_one(text.replace(value, urdf_value), urdf=one(velocity="3.14"))
    assert getattr(lim, key) == float(urdf_value)


def test_widening_position_refused_tightening_kept():
    wide = "joint_limits:\n  j: {has_position_limits: true, min_position: -1.5, max_position: 0.5}\n"
    with pytest.raises(LimitsError, match=r"^j: min_position -1.5 in <yaml> widens the URDF's -1$"):
        load_one(wide)
    wide_hi = "joint_limits:\n  j: {has_position_limits: true, min_position: -0.5, max_position: 1.01}\n"
    with pytest.raises(LimitsError, match=r"^j: max_position 1.01 in <yaml> widens the URDF's 1$"):
        load_one(wide_hi)
    lim, _ = load_one(wide_hi.replace("1.01", "0.5"))
    assert (lim.min_position, lim.max_position) == (-0.5, 0.5)


def test_unknown_joint_refused_naming_it_and_the_known_joints():
    text = "joint_limits:\n  j: {has_velocity_limits: true, max_velocity: 1.0}\n  jj: {}\n"
    with pytest.raises(LimitsError, match=r"f.yaml: unknown joint\(s\) \['jj'\]; the arm's joints are \['j'\]"):
        load_one(text, where="f.yaml")


def test_unknown_key_refused():
    text = "joint_limits:\n  j: {has_velocity_limits: true, max_velocty: 1.0}\n"
    with pytest.raises(LimitsError, match=r"^f.yaml: j: unknown key 'max_velocty'"):
        load_one(text, where="f.yaml")
    # a typo inside the soft_limits section too
    soft = "joint_limits:\n  j: {soft_limits: {k_position: 1.0, soft_lower: 0.0}}\n"
    with pytest.raises(LimitsError, match=r"j: unknown key\(s\) \['soft_lower'\] in soft_limits"):
        load_one(soft)


def test_soft_and_deceleration_keys_accepted_and_ignored_with_one_warning():
    text = """joint_limits:
  j:
    has_deceleration_limits: true
    max_deceleration: 0.1
    has_soft_limits: true
    k_position: 10.0
    k_velocity: 10.0
    soft_lower_limit: -0.9
    soft_upper_limit: 0.9
    angle_wraparound: false
    soft_limits: {k_position: 1.0, soft_lower_limit: -0.5, soft_upper_limit: 0.5}
"""
    lim, warnings = load_one(text)
    assert (lim.min_position, lim.max_position, lim.max_acceleration) == (-1.0, 1.0, 2.0)
    ignored = [w for w in warnings if "accepted and ignored" in w]
    assert len(ignored) == 1
    assert "max_deceleration" in ignored[0] and "soft_limits" in ignored[0] and "k_position" in ignored[0]


@pytest.mark.parametrize("text, message", [
    ("joint_limits:\n  j: {has_velocity_limits: true, max_velocity: !deg 90}\n", r"unknown YAML tag '!deg'"),
    ("joint_limits:\n  j: !!python/object:os.system {}\n", r"unknown YAML tag 'tag:yaml.org,2002:python/object"),
    ("joint_limits:\n  j: {has_velocity_limits: true, max_velocity: 1.0, max_velocity: 0.5}\n",
     r"duplicate key 'max_velocity'"),
    ("joint_limits:\n  j: {has_velocity_limits: true, max_velocity: !degrees fast}\n",
     r"!degrees 'fast' is not a number"),
])
def test_unknown_tag_and_duplicate_key_refused(text, message):
    with pytest.raises(LimitsError, match=message) as e:
        load_one(text, where="f.yaml")
    assert str(e.value).startswith("f.yaml: ")


def test_radians_tag_with_pi():
    text = "joint_limits:\n  j: {has_position_limits: true, min_position: !radians -pi/4, max_position: !radians 0.5}\n"
    lim, _ = load_one(text)
    assert lim.min_position == pytest.approx(-math.pi / 4) and lim.max_position == 0.5


@pytest.mark.parametrize("value", ["0", "-1.0", ".nan", ".inf", "'fast'", "true"])
def test_non_positive_or_non_finite_velocity_refused(value):
    text = f"joint_limits:\n  j: {{has_velocity_limits: true, max_velocity: {value}}}\n"
    with pytest.raises(LimitsError,
                       match=r"^f.yaml: j: max_velocity .*(must be positive|must be finite|must be a number)"):
        load_one(text, where="f.yaml")


def test_bad_urdf_values_refused():
    with pytest.raises(LimitsError, match=r"URDF: j: max_velocity 0 must be positive"):
        load_one(None, urdf=one(velocity="0"))
    with pytest.raises(LimitsError, match=r"URDF: j: lower 1 must be below upper -1"):
        load_one(None, urdf=one(lower="1", upper="-1"))
    with pytest.raises(LimitsError, match=r"velocity='fast' is not a number"):
        urdf_limit("revolute", "0", "1", "fast", "1")
    with pytest.raises(LimitsError, match=r"'fixed' has no joint limits"):
        urdf_limit("fixed", None, None, None, None)
    with pytest.raises(LimitsError, match=r"URDF: no limits for joint\(s\) \['k'\]"):
        load_joint_limits(None, ["j", "k"], one())


def test_missing_position_or_velocity_refused_missing_effort_is_inf():
    with pytest.raises(LimitsError, match=r"j: no min_position and max_position in the URDF or URDF for a "
                                          r"revolute joint \(a joint without position limits must be declared "
                                          r"continuous in the URDF\)"):
        load_one(None, urdf=one(lower=None, upper=None))
    with pytest.raises(LimitsError, match=r"j: no max_velocity in the URDF or f.yaml"):
        load_one({"j": {"has_effort_limits": True, "max_effort": 5.0}}, urdf=one(velocity=None), where="f.yaml")
    lim, warnings = load_one(None, urdf=one(effort=None))
    assert lim.max_effort == math.inf
    assert "j: no effort limit; using inf" in warnings
    # the YAML may complete what the URDF lacks
    lim, _ = load_one({"j": {"has_position_limits": True, "min_position": -0.2, "max_position": 0.3}},
                      urdf=one(lower=None, upper=None))
    assert (lim.min_position, lim.max_position) == (-0.2, 0.3)


# ------------------------------------------------------------------ joint kinds and units
def test_continuous_joint_has_infinite_position_limits():
    urdf = one(kind="continuous", lower="-3", upper="3")  # the URDF ignores lower/upper on continuous joints
    assert urdf["j"] == {"kind": "continuous", "min_position": None, "max_position": None,
                         "max_velocity": 2.0, "max_effort": 10.0}
    lim, warnings = load_one({"j": {"has_position_limits": False, "angle_wraparound": True}}, urdf=urdf)
    assert (lim.min_position, lim.max_position) == (-math.inf, math.inf)
    assert lim.max_velocity == 2.0
    assert not any("has_position_limits" in w for w in warnings)
    # a YAML may still limit a continuous joint (that only tightens)
    lim, _ = load_one({"j": {"has_position_limits": True, "min_position": -7.0, "max_position": 7.0}}, urdf=urdf)
    assert (lim.min_position, lim.max_position) == (-7.0, 7.0)


def test_prismatic_joint_in_metres():
    urdf = one(kind="prismatic", lower="0.0", upper="0.5", velocity="0.25", effort="200")
    lim, warnings = load_one({"j": {"has_position_limits": True, "min_position": 0.01, "max_position": 0.45}},
                             urdf=urdf)
    assert (lim.min_position, lim.max_position, lim.max_velocity, lim.max_effort) == (0.01, 0.45, 0.25, 200.0)
    assert lim.max_acceleration == 0.25 and lim.max_jerk == 2.5
    assert "j: no acceleration limit; using 0.25 m/s^2 (1 x max_velocity per s)" in warnings
    assert "j: no jerk limit; using 2.5 m/s^3 (10 x max_acceleration per s)" in warnings
    with pytest.raises(LimitsError, match=r"j: max_position is tagged !degrees but is in m \(prismatic joint\)"):
        load_one("j: {has_position_limits: true, min_position: 0.0, max_position: !degrees 10}\n", urdf=urdf)


# ------------------------------------------------------------------ has_* flags
def test_has_false_cannot_remove_urdf_limits():
    text = """joint_limits:
  j:
    has_position_limits: false
    has_velocity_limits: false
    max_velocity: 0.5
    has_effort_limits: false
"""
    lim, warnings = load_one(text, where="f.yaml")
    assert (lim.min_position, lim.max_position, lim.max_velocity, lim.max_effort) == (-1.0, 1.0, 2.0, 10.0)
    assert "j: has_position_limits: false in f.yaml cannot remove the URDF's position limits [-1, 1] rad " \
           "of a revolute joint; kept" in warnings
    assert "j: has_velocity_limits: false in f.yaml cannot remove the URDF's max_velocity 2 rad/s; kept" in warnings
    assert "j: has_effort_limits: false in f.yaml cannot remove the URDF's max_effort 10 Nm; kept" in warnings
    # with no URDF effort, has_effort_limits: false leaves none: inf
    lim, warnings = load_one(text, urdf=one(effort=None))
    assert lim.max_effort == math.inf and "j: no effort limit; using inf" in warnings


def test_has_true_without_value_refused():
    with pytest.raises(LimitsError,
                       match=r"^f.yaml: j: has_acceleration_limits is true but max_acceleration is missing"):
        load_one({"j": {"has_acceleration_limits": True}}, where="f.yaml")
    with pytest.raises(LimitsError, match=r"j: has_position_limits is true but max_position is missing"):
        load_one({"j": {"has_position_limits": True, "min_position": 0.0}})
    with pytest.raises(LimitsError, match=r"j: has_velocity_limits must be true or false, not 'yes please'"):
        load_one({"j": {"has_velocity_limits": "yes please", "max_velocity": 1.0}})


def test_value_without_its_flag_is_ignored_like_ros2_control():
    lim, warnings = load_one({"j": {"max_velocity": 0.5, "max_acceleration": 3.0}}, where="f.yaml")
    assert lim.max_velocity == 2.0 and lim.max_acceleration == 2.0
    assert "j: max_velocity in f.yaml without has_velocity_limits: true; ignored " \
           "(as ros2_control's joint_limits loader ignores it)" in warnings
    assert any(w.startswith("j: max_acceleration in f.yaml without has_acceleration_limits") for w in warnings)

"""The shipped SROS2 policy (config/sros2_policy.xml) against the nodes' own endpoints.

Each of the four nodes is started bare on a private context and the ROS graph is asked what it
created (publishers, subscriptions, services, clients); every one must be allowed in the node's
enclave, so a node that gains an endpoint fails here until the policy has it. The exclusive
rights (only the gate publishes the controller's command topic, only the planner plans, only
the operator calls the e-stop services) are checked on the file. DDS security itself is not
run here: the Fast DDS of the PyPI wheels is built without its security plugins.
"""
import xml.etree.ElementTree as ET

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ami_ros.core.arm import share_dir  # noqa: E402

pytestmark = pytest.mark.ros
POLICY = f"{share_dir()}/config/sros2_policy.xml"
NODES = ("sim_node", "encoder_node", "planner_node", "safety_node")
#: (graph query, the policy's element and attribute that allows it)
KINDS = {"publish": ("get_publisher_names_and_types_by_node", "topics", "publish"),
         "subscribe": ("get_subscriber_names_and_types_by_node", "topics", "subscribe"),
         "reply": ("get_service_names_and_types_by_node", "services", "reply"),
         "request": ("get_client_names_and_types_by_node", "services", "request")}


def read_policy(path=POLICY) -> dict:
    """{enclave path: {kind: set of names}} (kind: publish, subscribe, reply, request)."""
    root = ET.parse(path).getroot()
    assert root.tag == "policy" and root.get("version") == "0.2.0"
    out = {}
    for enclave in root.find("enclaves").findall("enclave"):
        rules = out.setdefault(enclave.get("path"), {k: set() for k in KINDS})
        for profile in enclave.find("profiles").findall("profile"):
            assert profile.get("ns") == "/" and profile.get("node")
            for block in profile:
                tag = {"topics": "topic", "services": "service"}[block.tag]
                names = {e.text.strip() for e in block.findall(tag)}
                assert names and all(n.startswith("/") for n in names), (enclave.get("path"), names)
                for kind, (_, element, attr) in KINDS.items():
                    if block.tag == element and block.get(attr) == "ALLOW":
                        rules[kind] |= names
                assert {a for a in block.attrib} <= {"publish", "subscribe", "reply", "request"}
    return out


def uncovered(node, rules) -> list[str]:
    """The endpoints of ``node`` (on the graph) its enclave's rules do not allow."""
    name, ns = node.get_name(), node.get_namespace()
    out = []
    for kind, (query, _, _) in KINDS.items():
        for endpoint, _ in getattr(node, query)(name, ns):
            if endpoint not in rules[kind]:
                out.append(f"{kind} {endpoint}")
    return out


@pytest.fixture(scope="module")
def policy():
    return read_policy()


def test_the_exclusive_rights(policy):
    def holders(kind, name):
        return sorted(e for e, rules in policy.items() if name in rules[kind])

    assert holders("publish", "/arm_controller/joint_trajectory") == ["/ami_ros/safety_node"]
    assert holders("publish", "/ami/plan") == ["/ami_ros/planner_node"]
    for service in ("/ami/reset_estop", "/ami/trip_estop"):
        assert holders("request", service) == ["/ami_ros/operator"]
        assert holders("reply", service) == ["/ami_ros/safety_node"]
    assert holders("publish", "/ami/estop") == ["/ami_ros/operator"]


def test_the_launch_files_run_each_node_in_its_enclave(policy):
    import ast
    from pathlib import Path

    from test_launch_files import LaunchFile, const_str, kwarg

    seen = set()
    for path in sorted((Path(__file__).parents[1] / "launch").glob("*.launch.py")):
        for call in LaunchFile(path).ami_nodes():
            name = const_str(kwarg(call, "name"))
            args = kwarg(call, "ros_arguments")
            assert isinstance(args, ast.List), f"{path.name}: {name} without ros_arguments"
            assert [const_str(a) for a in args.elts] == ["--enclave", f"/ami_ros/{name}"], path.name
            assert f"/ami_ros/{name}" in policy
            seen.add(name)
    assert seen == set(NODES)


@pytest.mark.parametrize("kind", NODES)
def test_the_policy_covers_every_endpoint_of_the_node(kind, policy, ros_domain_id):
    from ami_ros.nodes.stack import node_class

    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain_id)
    try:
        node = node_class(kind.removesuffix("_node"))(context=ctx)
        try:
            rules = policy[f"/ami_ros/{kind}"]
            assert uncovered(node, rules) == []
            # the check fails for an endpoint the policy lacks
            node.create_publisher(String, "/ami/not_in_the_policy", 1)
            assert uncovered(node, rules) == ["publish /ami/not_in_the_policy"]
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)

"""QoS profiles, chosen once and used by every node (docs/CONVENTIONS.md lists them per topic)."""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

#: commands, plans, embeddings: the newest one is the one that counts
RELIABLE_1 = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: joint states and probes: a short queue, nothing lost in a burst
RELIABLE_10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: state and goals a late joiner must still get (safety state, goal image, goal status)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)

"""Everything the stack decides, with no ROS in it (numpy, torch, yaml only)."""

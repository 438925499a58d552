"""Session script (docs/results.md 23; python energy-tracks-session.py MODEL_DIR PART_F_DIR ROBOT).
How well the goal energies order a recording's frames by the tool's distance from the episode's last frame's
tool: Spearman rank corr. per episode (median), for z_vis and for the goal features; and the per-tick change of
each space against its spread. Held-out part f episodes (the cards' split: the last 165)."""
import sys, glob, json, numpy as np, torch
from scipy.stats import spearmanr
from ami_ros.core.model_io import load_model
from ami_ros.core.arm import load_arm
from ami_ros.data.bags import load_episode
from ami_ros.core.world_model import image_to_tensor
torch.set_num_threads(1)
model_dir, data_dir, robot = sys.argv[1], sys.argv[2], sys.argv[3]
arm = load_arm(robot)
m = load_model(model_dir, device="cpu", arm=arm).torch_model.eval()
eps = sorted(glob.glob(data_dir + "/episode_*"))[-165:][::2]   # part f's held-out episodes, every 2nd
rz, rg, step_z, step_g = [], [], [], []
allz, allg = [], []
for p in eps:
    e = load_episode(p, joint_names=arm.joint_names)
    with torch.no_grad():
        z, g = m.encode_vis_and_goal(image_to_tensor(e.frames))
    z, g = z.numpy(), g.numpy()
    d = np.linalg.norm(e.tool - e.tool[-1], axis=1)
    if np.ptp(d) < 0.05: continue
    rz.append(spearmanr(((z - z[-1]) ** 2).sum(1), d)[0]); rg.append(spearmanr(((g - g[-1]) ** 2).sum(1), d)[0])
    step_z.append(((z[1:] - z[:-1]) ** 2).sum(1).mean()); step_g.append(((g[1:] - g[:-1]) ** 2).sum(1).mean())
    allz.append(z); allg.append(g)
Z, G = np.concatenate(allz), np.concatenate(allg)
out = {"model": model_dir, "episodes": len(rz),
       "rank_corr_zvis_median": float(np.median(rz)), "rank_corr_goal_features_median": float(np.median(rg)),
       "tick_change_over_spread_zvis": float(np.mean(step_z) / ((Z - Z.mean(0)) ** 2).sum(1).mean()),
       "tick_change_over_spread_goal_features": float(np.mean(step_g) / ((G - G.mean(0)) ** 2).sum(1).mean())}
print(json.dumps(out))

"""The embedded MuJoCo simulator: a table-top 6-DoF arm, a cube and a fixed camera."""

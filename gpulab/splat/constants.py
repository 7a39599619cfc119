"""The constants of the 3DGS rasterizer (diff-gaussian-rasterization, Kerbl et al. 2023; gsplat)."""
TILE = 16                  # tiles are TILE x TILE pixels; one CUDA block of 256 threads each
BATCH = TILE * TILE        # Gaussians staged through shared memory per round (one per thread)
NEAR_PLANE = 0.2           # view-space z at or below this is culled
LOW_PASS = 0.3             # added to the 2D covariance's diagonal (every splat >= ~1 pixel)
FOV_CLAMP = 1.3            # x/z and y/z clamped to 1.3 * tan(half field of view) for J
EIGEN_FLOOR = 0.1          # lambda_max = mid + sqrt(max(0.1, mid^2 - det))
SIGMAS = 3.0               # radius = ceil(3 sqrt(lambda_max))
EXTEND_MAX = 3.33          # binning box: at most 3.33 sigma per axis (gsplat 1.5's opacity-aware box)
ALPHA_MAX = 0.99           # alpha = min(0.99, opacity * G): no splat is fully opaque
ALPHA_MIN = 1.0 / 255.0    # contributions below one 8-bit step are skipped
T_MIN = 1e-4               # stop before the transmittance would fall below this

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
         -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

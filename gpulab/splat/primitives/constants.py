"""The constants of chapter 07's primitives, with where each comes from."""
# 4D Gaussians (Yang et al. 2023, arXiv:2310.10642; Duan et al. 2024, arXiv:2402.03307): the
# reference renderers drop a Gaussian whose temporal marginal exp(-dt^2 / (2 Sigma_tt)) at the
# frame's time is at most 0.05 (fudan-zvg/4d-gaussian-splatting, ``marginal_t[:, 0] > 0.05``)
TEMPORAL_CULL = 0.05

# smooth convexes (Held et al. 2024, arXiv:2411.14974): up to 8 points per convex here (the
# paper uses 6), so a projected hull has at most 8 edges; unused edge slots are padded with a
# signed distance so negative that exp() of it is 0 and it never wins the max
MAX_HULL = 8
PAD_OFFSET = -1.0e20

# triangles (Held et al. 2025, arXiv:2505.19175): sigma = 0.01 + exp(raw) in the reference code
SIGMA_FLOOR = 0.01

# physically based shading (GI-GS, Chen et al. 2024, arXiv:2410.02619; the usual metallic
# workflow): dielectrics reflect 4% at normal incidence, F0 = lerp(0.04, albedo, metallic)
F0_DIELECTRIC = 0.04
GBUFFER_CHANNELS = ("depth", "normal_x", "normal_y", "normal_z", "albedo_r", "albedo_g", "albedo_b",
                    "roughness", "metallic")

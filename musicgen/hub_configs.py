"""The configurations of the real run's hub models, to build them with random weights offline.

``facebook/encodec_32khz`` and ``t5-base`` are downloads; their shapes (and so their memory,
their kernels and their numerics in half precision) are not. ``tests/test_real_models.py`` runs
every stage with models built from these, and ``scripts/gpu_check.py`` measures the half-precision
error of both on a GPU.
"""

from __future__ import annotations

# facebook/encodec_32khz's config.json: EncodecConfig's defaults (hidden 128, 1 residual layer,
# 2 LSTM layers, kernels 7/7/3, weight norm, reflect padding, compress 2) with these set, as
# transformers' convert_encodec_checkpoint_to_pytorch.py does for "encodec_32khz".
ENCODEC_32KHZ = {
    "sampling_rate": 32000,
    "audio_channels": 1,
    "normalize": False,
    "chunk_length_s": None,
    "overlap": None,
    "upsampling_ratios": [8, 5, 4, 4],  # hop 640: 50 frames/s
    "target_bandwidths": [2.2],  # 4 codebooks x 11 bits x 50 frames/s
    "num_filters": 64,
    "hidden_size": 128,
    "codebook_size": 2048,
    "num_residual_layers": 1,
    "num_lstm_layers": 2,
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_growth_rate": 2,
    "compress": 2,
    "norm_type": "weight_norm",
    "pad_mode": "reflect",
    "trim_right_ratio": 1.0,
    "use_causal_conv": False,
    "use_conv_shortcut": False,
}

# t5-base's config.json (the encoder's part; the decoder is not used).
T5_BASE = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 3072,
    "num_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "relu",
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

"""Models: loading the DT4H encoders and heads, the CPU backends (OpenVINO, the timed dtype
choice), language identification. No Beam: the stages wrap them."""

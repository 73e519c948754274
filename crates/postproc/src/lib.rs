//! kagi-postproc

"""Test support: synthetic and real CT series, shared by unit, integration and interop tests."""

# A test node's spool reserve (dicom_node/reserve.py): big enough to be used, small enough that filling it
# at every start costs a test nothing. The benchmarks run the node's default instead.
TEST_RESERVE_MB = 16

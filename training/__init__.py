"""Megatron-core pretraining and midtraining for phiflow. Imports torch; never Airflow."""

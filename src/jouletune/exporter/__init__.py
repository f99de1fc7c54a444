"""jouletune.exporter"""

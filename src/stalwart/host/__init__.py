"""The host: process trees and their signals, resource sampling, background threads."""

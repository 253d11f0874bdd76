#!/usr/bin/env bash
echo "java deps: (pending)"

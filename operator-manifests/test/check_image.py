#!/usr/bin/env python3
"""Checks image/Dockerfile against what the binaries need, without an engine.

1. The runtime stage's packages (with their dependencies, and the packages
   every Debian image has) hold every shared library `ldd` shows for the
   binaries given, as this Debian 12 machine maps them to packages.
2. The build stage installs every build package of scripts/install-deps.sh.
3. The runtime stage runs as a non-root user and names its entrypoint.

Usage: check_image.py DOCKERFILE INSTALL_DEPS_SH BINARY...
"""
import os
import re
import subprocess
import sys


def stages(dockerfile):
    """{stage name: its text}, split at each FROM ... AS NAME."""
    out, name = {}, None
    for line in open(dockerfile):
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            name = m.group(1)
        if name:
            out[name] = out.get(name, "") + line
    return out


def apt_packages(text):
    """Packages named by the `apt-get install` commands of a stage."""
    text = text.replace("\\\n", " ")
    pkgs = set()
    for m in re.finditer(r"apt-get install ([^&;]*)", text):
        for tok in m.group(1).split():
            tok = tok.strip('"')
            if not tok.startswith("-") and "$" not in tok:
                pkgs.add(tok)
    return pkgs


def closure(pkgs):
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                          "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *pkgs],
                         capture_output=True, text=True, check=True).stdout
    found = set(pkgs)
    for line in out.splitlines():
        m = re.match(r"\s*(?:\|)?(?:Pre)?Depends: <?([^\s>:]+)", line)
        if m:
            found.add(m.group(1))
        elif line and not line[0].isspace():
            found.add(line.split(":")[0].strip())
    return found


def required_packages():
    """What every Debian image holds: the packages of priority required."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Priority}\n"], capture_output=True, text=True).stdout
    return {p for p, prio in (l.split() for l in out.splitlines() if l.strip()) if prio == "required"}


def package_of(lib):
    for path in (lib, os.path.realpath(lib)):
        for candidate in (path, re.sub(r"^/usr(/lib)", r"\1", path)):
            r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if r.returncode == 0:
                return r.stdout.split(":")[0].strip()
    return None


def main(dockerfile, install_deps, binaries):
    st = stages(dockerfile)
    failures = []
    runtime = st.get("runtime", "")
    build = st.get("build", "")
    if not runtime or not build:
        failures.append(f"{dockerfile}: needs stages 'build' and 'runtime' (has {sorted(st)})")
    have = closure(apt_packages(runtime)) | required_packages()
    libs = set()
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True, check=True).stdout
        libs |= {m.group(1) for m in re.finditer(r"=> (/\S+)", out)}
    for lib in sorted(libs):
        pkg = package_of(lib)
        if pkg is None:
            failures.append(f"{lib}: no Debian package holds it (built by hand?)")
        elif pkg not in have:
            failures.append(f"{lib} (package {pkg}) is not installed by the runtime stage")
    deps = open(install_deps).read()
    wanted = set(re.findall(r"\b([a-z0-9][a-z0-9+.-]*-dev|protobuf-compiler(?:-grpc)?|cmake|ninja-build)\b",
                            deps.split("PACKAGES=(", 1)[1].split(")", 1)[0]))
    missing = wanted - apt_packages(build)
    if missing:
        failures.append(f"the build stage lacks {sorted(missing)} (scripts/install-deps.sh builds with them)")
    if not re.search(r"^USER\s+[1-9][0-9]*(:[1-9][0-9]*)?\s*$", runtime, re.M):
        failures.append("the runtime stage must end as a numeric non-root USER (runAsNonRoot checks it)")
    if not re.search(r"^ENTRYPOINT\s+\[", runtime, re.M):
        failures.append("the runtime stage needs an exec-form ENTRYPOINT")
    for f in failures:
        print(f)
    print(f"image: {len(libs)} libraries of {len(binaries)} binaries covered by the runtime stage, "
          f"{len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))

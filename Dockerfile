# weft node proxy image. The build stage runs the same build script CI runs
# (scripts/build.sh: bpf/ with clang, native/ with cc, TypeScript with tsc).
FROM node:20-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang llvm libbpf-dev linux-libc-dev gcc make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weft
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN bash scripts/build.sh && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libbpf1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/weft
COPY --from=build /opt/weft/package.json ./
COPY --from=build /opt/weft/node_modules ./node_modules
COPY --from=build /opt/weft/dist ./dist
COPY --from=build /opt/weft/build ./build
# A 1 MB young generation: less CPU per GB and lower RSS (docs/benchmarks.md).
ENV NODE_OPTIONS=--max-semi-space-size=1
ENTRYPOINT ["node", "/opt/weft/dist/src/cli/main.js"]

/*
 * zstd, built by the zstd-sys crate, asks the CPU for its features (`cpuid`) every time
 * it creates a compression or decompression context: ZSTD_initCCtx and
 * ZSTD_initDCtx_internal call ZSTD_cpuSupportsBmi2(), which runs `cpuid` three times.
 * parquet-rs creates both contexts for every column chunk it reads (ZSTDCodec::new), and
 * under a hypervisor every `cpuid` is a VM exit: 3.7 us each on the benchmark machine,
 * 22 us per column chunk, 14 % of the CPU of a one-sensor query (benches/README.md).
 * The answer cannot change while the process runs, so it is asked once per caller and
 * kept. Neither zstd-sys nor parquet has a setting for this (zstd's own fix, PR 4746,
 * covers only builds with -mbmi2), hence this header; ./cc force-includes it into zstd's
 * sources alone (.cargo/config.toml points the C compiler there), and
 * engine/tests/zstd_cpuid.rs fails if contexts still run `cpuid`.
 *
 * How: zstd's cpu.h defines `ZSTD_cpuid(void)` and its callers write `ZSTD_cpuid()`. The
 * function-like macro below renames the definition to talo_zstd_cpuid_probe and turns each
 * call into a statement expression that runs the probe the first time and returns the
 * kept answer after (atomics: a context may be created on any thread). Nothing else
 * changes; should a zstd release rename ZSTD_cpuid, these macros are simply unused.
 */
#ifndef TALO_ZSTD_CPUID_ONCE_H
#define TALO_ZSTD_CPUID_ONCE_H

#define ZSTD_cpuid(x) TALO_ZSTD_CPUID_##x
#define TALO_ZSTD_CPUID_void talo_zstd_cpuid_probe(void)
#define TALO_ZSTD_CPUID_                                                    \
    __extension__({                                                         \
        static unsigned talo_kept[4];                                       \
        static int talo_known;                                              \
        ZSTD_cpuid_t talo_c;                                                \
        if (__atomic_load_n(&talo_known, __ATOMIC_ACQUIRE)) {               \
            talo_c.f1c = __atomic_load_n(&talo_kept[0], __ATOMIC_RELAXED);  \
            talo_c.f1d = __atomic_load_n(&talo_kept[1], __ATOMIC_RELAXED);  \
            talo_c.f7b = __atomic_load_n(&talo_kept[2], __ATOMIC_RELAXED);  \
            talo_c.f7c = __atomic_load_n(&talo_kept[3], __ATOMIC_RELAXED);  \
        } else {                                                            \
            talo_c = talo_zstd_cpuid_probe();                               \
            __atomic_store_n(&talo_kept[0], talo_c.f1c, __ATOMIC_RELAXED);  \
            __atomic_store_n(&talo_kept[1], talo_c.f1d, __ATOMIC_RELAXED);  \
            __atomic_store_n(&talo_kept[2], talo_c.f7b, __ATOMIC_RELAXED);  \
            __atomic_store_n(&talo_kept[3], talo_c.f7c, __ATOMIC_RELAXED);  \
            __atomic_store_n(&talo_known, 1, __ATOMIC_RELEASE);             \
        }                                                                   \
        talo_c;                                                             \
    })

#endif

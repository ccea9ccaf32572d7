using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.Json;
using NUnit.Framework;

namespace Vmm.Host.Tests.Run;

/// <summary>
/// <c>vmm run</c> as scripts use it: the real launcher on temporary images, checking stdout,
/// stderr and exit codes (docs/cli.md). No timing is asserted.
/// </summary>
[TestFixture]
[Parallelizable(ParallelScope.None)]
public sealed class RunCommandProcessTests
{
    [TestCase("pci")]
    [TestCase("mmio")]
    public void Checksum_prints_the_sha256_of_the_image(string transport)
    {
        using var image = new TempImage((3 << 20) + (7 * 512), seed: 11);
        VmmProcess.Result r = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", "--workload", "checksum", "--transport", transport);
        string expected = Convert.ToHexStringLower(SHA256.HashData(image.Read()));
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr);
            Assert.That(r.Stdout, Is.EqualTo($"sha256 {expected}\n"));
        });
    }

    [TestCase]
    [TestCase("--packed", "--interrupts", "event")]
    [TestCase("--transport", "mmio", "--no-indirect", "--no-event-idx")]
    public void Verify_exits_0_and_leaves_the_pattern_on_the_image(params string[] extra)
    {
        const int length = 2 << 20;
        using var image = new TempImage(length, seed: 12);
        VmmProcess.Result r = VmmProcess.Run(["run", "--device", $"blk,disk={image.Path}", "--workload", "verify", "--block-size", "64k", "--iodepth", "8", .. extra]);
        byte[] bytes = image.Read();
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr);
            Assert.That(r.Stdout, Does.StartWith("verify:"));
            Assert.That(bytes, Has.Length.EqualTo(length));
            for (int o = 0; o < length; o += 8)
            {
                // The documented pattern: word n = n * 0x9E3779B97F4A7C15 + 0x0123456789ABCDEF.
                ulong want = unchecked(((ulong)(o / 8) * 0x9E3779B97F4A7C15UL) + 0x0123456789ABCDEFUL);
                if (BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(o)) != want)
                {
                    Assert.Fail($"byte {o} does not hold the pattern");
                }
            }
        });
    }

    [Test]
    public void Verify_of_a_read_only_disk_fails_with_one_sentence_and_leaves_it_unchanged()
    {
        using var image = new TempImage(1 << 20, seed: 13);
        byte[] before = image.Read();
        VmmProcess.Result r = VmmProcess.Run("run", "--device", $"blk,disk={image.Path},read-only", "--workload", "verify");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(1));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1));
            Assert.That(r.Stderr, Does.Contain("read-only"));
            Assert.That(image.Read(), Is.EqualTo(before));
        });
    }

    [Test]
    public void A_missing_disk_is_a_usage_error_in_one_sentence()
    {
        string missing = Path.Combine(Path.GetTempPath(), $"vmm-missing-{Guid.NewGuid():N}.img");
        VmmProcess.Result r = VmmProcess.Run("run", "--device", $"blk,disk={missing}");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1));
            Assert.That(r.Stderr, Does.Contain(missing).And.Not.Contain("   at "));
            Assert.That(r.Stdout, Is.Empty);
        });
    }

    [TestCase("--transport", "isa")]
    [TestCase("--block-size", "1000")]
    [TestCase("--memory", "lots")]
    [TestCase("--rw", "sideways")]
    [TestCase("--iodepth", "0")]
    public void Bad_option_values_exit_2_with_one_line(string option, string value)
    {
        using var image = new TempImage(1 << 20, seed: 14);
        VmmProcess.Result r = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", option, value);
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.EqualTo(2));
            Assert.That(r.StderrLines, Has.Length.EqualTo(1), r.Stderr);
        });
    }

    [Test]
    public void Bench_json_is_one_object_with_the_required_keys()
    {
        using var image = new TempImage(4 << 20, seed: 15);
        VmmProcess.Result r = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", "--workload", "bench", "--seconds", "1", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Stderr);
        using JsonDocument doc = JsonDocument.Parse(r.Stdout);
        JsonElement o = doc.RootElement;
        Assert.Multiple(() =>
        {
            Assert.That(r.Stdout.Trim().Split('\n'), Has.Length.EqualTo(1));
            Assert.That(o.ValueKind, Is.EqualTo(JsonValueKind.Object));
            foreach (string key in new[] { "iops", "mib_s", "p50_us", "p99_us", "errors", "block_size", "iodepth", "seconds" })
            {
                Assert.That(o.TryGetProperty(key, out JsonElement v) && v.ValueKind == JsonValueKind.Number, Is.True, key);
            }

            foreach (string key in new[] { "rw", "device", "transport" })
            {
                Assert.That(o.TryGetProperty(key, out JsonElement v) && v.ValueKind == JsonValueKind.String, Is.True, key);
            }

            Assert.That(o.GetProperty("errors").GetInt64(), Is.Zero);
            Assert.That(o.GetProperty("rw").GetString(), Is.EqualTo("randread"));
            Assert.That(o.GetProperty("block_size").GetInt32(), Is.EqualTo(4096));
            Assert.That(o.GetProperty("iodepth").GetInt32(), Is.EqualTo(32));
        });
    }

    [Test]
    public void Probe_describes_blk_and_rng()
    {
        using var image = new TempImage(1 << 20, seed: 16);
        VmmProcess.Result r = VmmProcess.Run("run", "--device", $"blk,disk={image.Path},read-only", "--device", "rng", "--workload", "probe");
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr);
            Assert.That(r.Stdout, Does.Contain("device blk: virtio device id 2"));
            Assert.That(r.Stdout, Does.Contain("device rng: virtio device id 4"));
            Assert.That(r.Stdout, Does.Contain("capacity            2048 sectors"));
            Assert.That(r.Stdout, Does.Contain("VERSION_1"));
            Assert.That(r.Stdout, Does.Match(@"negotiated features 0x[0-9a-f]{16} .*RO"));
            Assert.That(r.Stdout, Does.Contain("seg_max"));
        });
    }

    [TestCase("pci")]
    [TestCase("mmio")]
    public void Rng_verify_exits_0(string transport)
    {
        VmmProcess.Result r = VmmProcess.Run("run", "--device", "rng", "--transport", transport);
        Assert.Multiple(() =>
        {
            Assert.That(r.ExitCode, Is.Zero, r.Stderr);
            Assert.That(r.Stdout, Does.Contain("not constant"));
        });
    }
}

/// <summary><c>--workload idle</c>: stays up with its devices until SIGTERM, then exits 0.</summary>
[TestFixture]
public sealed class RunIdleProcessTests
{
    [Test]
    public void Idle_stays_until_SIGTERM_and_exits_0()
    {
        using var image = new TempImage(1 << 20, seed: 17);
        var start = new System.Diagnostics.ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
        };
        foreach (string a in new[] { "run", "--device", $"blk,disk={image.Path}", "--device", "rng", "--workload", "idle" })
        {
            start.ArgumentList.Add(a);
        }

        using var process = System.Diagnostics.Process.Start(start)!;
        try
        {
            string? first = process.StandardError.ReadLine();
            Assert.That(first, Does.Contain("waiting for SIGINT or SIGTERM"));
            Assert.That(process.HasExited, Is.False);

            // ./vmm execs dotnet, so the launcher's pid is the VMM's.
            using (var kill = System.Diagnostics.Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                kill.WaitForExit();
            }

            Assert.That(process.WaitForExit(TimeSpan.FromSeconds(30)), Is.True, "exits after SIGTERM");
            Assert.That(process.ExitCode, Is.Zero);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }
}

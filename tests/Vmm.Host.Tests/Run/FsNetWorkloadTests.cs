using System.Text;
using Vmm.Host.Cli;
using Vmm.Host.Run;

namespace Vmm.Host.Tests.Run;

/// <summary>The pure parts of the fs and net workloads: sha256sum's line format, the path order, frame building and checking.</summary>
public sealed class FsNetWorkloadTests
{
    static readonly byte[] Hash = new byte[32];

    [TestCase("./a b/c", "0000000000000000000000000000000000000000000000000000000000000000  ./a b/c")]
    [TestCase("./back\\slash", "\\0000000000000000000000000000000000000000000000000000000000000000  ./back\\\\slash")]
    [TestCase("./new\nline", "\\0000000000000000000000000000000000000000000000000000000000000000  ./new\\nline")]
    [TestCase("./car\rret", "\\0000000000000000000000000000000000000000000000000000000000000000  ./car\\rret")]
    public void Checksum_line_is_what_gnu_sha256sum_prints(string path, string line) =>
        Assert.That(FsWorkloads.ChecksumLine(Hash, Encoding.UTF8.GetBytes(path)), Is.EqualTo(line));

    [Test]
    public void Visiting_children_in_path_order_sorts_whole_paths_as_LC_ALL_C_sort_does()
    {
        // name, is directory, a file below it (for directories)
        (string Name, bool Dir)[] children = [("a", true), ("a.b", false), ("a b", true), ("a-", false), ("ab", true), ("a0", false), ("b", false), ("A", true)];
        var visited = children.ToList();
        visited.Sort((x, y) => FsWorkloads.CompareForPathOrder(Encoding.UTF8.GetBytes(x.Name), x.Dir, Encoding.UTF8.GetBytes(y.Name), y.Dir));
        string[] walk = [.. visited.Select(c => c.Dir ? $"./{c.Name}/x" : $"./{c.Name}")];
        string[] sorted = [.. walk.OrderBy(p => p, StringComparer.Ordinal)];
        Assert.That(walk, Is.EqualTo(sorted));
    }

    [Test]
    public void Net_and_fs_feature_bits_have_their_spec_names()
    {
        Assert.That(FeatureNames.Describe((1UL << 5) | (1UL << 15) | (1UL << 17) | (1UL << 32), Vmm.Virtio.Spec.VirtioDeviceId.Net), Is.EqualTo("MAC MRG_RXBUF CTRL_VQ VERSION_1"));
        Assert.That(FeatureNames.Describe(1, Vmm.Virtio.Spec.VirtioDeviceId.FileSystem), Is.EqualTo("NOTIFICATION"));
        Assert.That(FeatureNames.Describe(1, Vmm.Virtio.Spec.VirtioDeviceId.Entropy), Is.EqualTo("bit0"));
    }

    [Test]
    public void Varied_frame_sizes_start_at_60_and_cover_60_to_1514()
    {
        var sizes = Enumerable.Range(0, 1455).Select(i => NetWorkloads.VariedSize(i)).ToHashSet();
        Assert.That(NetWorkloads.VariedSize(0), Is.EqualTo(60));
        Assert.That(sizes, Has.Count.EqualTo(1455));
        Assert.That(sizes.Min(), Is.EqualTo(60));
        Assert.That(sizes.Max(), Is.EqualTo(1514));
    }

    [Test]
    public void A_built_frame_checks_out_and_any_changed_byte_does_not()
    {
        byte[] mac = [2, 0, 0, 0, 0, 1];
        byte[] frame = new byte[1514];
        NetWorkloads.BuildFrame(frame, mac, 4242, 700);
        Assert.That(NetWorkloads.CheckFrame(frame.AsSpan(0, 700), mac), Is.EqualTo(4242));
        foreach (int at in new[] { 0, 7, 12, 14, 18, 20, 699 })
        {
            frame[at] ^= 0x40;
            Assert.That(NetWorkloads.CheckFrame(frame.AsSpan(0, 700), mac), Is.EqualTo(-1), $"byte {at} changed");
            frame[at] ^= 0x40;
        }

        Assert.That(NetWorkloads.CheckFrame(frame.AsSpan(0, 699), mac), Is.EqualTo(-1), "cut short");
    }
}

/// <summary>Which devices the fs and net workloads accept (usage errors, exit 2, before anything connects).</summary>
public sealed class FsNetWorkloadValidationTests
{
    static IDeviceSource Remote(string type) => new VhostUserDeviceSource(VhostUserSpec.Parse($"/tmp/x.sock,type={type}"), $"{type}0");

    [TestCase(RunWorkload.Fs, "net", "exactly one fs device")]
    [TestCase(RunWorkload.FsVerify, "blk", "exactly one fs device")]
    [TestCase(RunWorkload.Net, "fs", "exactly one net device")]
    [TestCase(RunWorkload.Bench, "rng", "one blk, fs or net device")]
    [TestCase(RunWorkload.Verify, "fs", "works on blk and rng devices, not fs")]
    public void Workload_on_the_wrong_device_is_a_usage_error(RunWorkload workload, string type, string message) =>
        Assert.That(() => RunCommand.Validate(new RunOptions { Devices = [Remote(type)], Workload = workload }),
            Throws.TypeOf<UsageException>().With.Message.Contains(message));

    [TestCase(RunWorkload.Fs, "fs")]
    [TestCase(RunWorkload.FsVerify, "fs")]
    [TestCase(RunWorkload.Net, "net")]
    [TestCase(RunWorkload.Bench, "fs")]
    [TestCase(RunWorkload.Bench, "net")]
    public void Workload_on_its_device_is_accepted(RunWorkload workload, string type) =>
        Assert.That(() => RunCommand.Validate(new RunOptions { Devices = [Remote(type)], Workload = workload }), Throws.Nothing);

    [Test]
    public void Zero_frames_is_a_usage_error() =>
        Assert.That(() => RunCommand.Validate(new RunOptions { Devices = [Remote("net")], Workload = RunWorkload.Net, Frames = 0 }),
            Throws.TypeOf<UsageException>().With.Message.Contains("--frames"));
}

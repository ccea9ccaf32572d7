using System.Buffers.Binary;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Virtio;
using Vmm.Virtio.Devices.Blk;
using Vmm.Virtio.Devices.Rng;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Conformance;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Conformance;

/// <summary>
/// The conformance checker against our own back-end: every check passes when nothing is wrong,
/// and each check fails when the back-end (behind <see cref="FaultyBackend"/>, or a broken test
/// device) breaks the rule it is about.
/// </summary>
[TestFixture]
[Parallelizable(ParallelScope.None)]
public sealed class ConformanceTests
{
    // Generous where every wait ends in a completion; short where a test makes one wait in vain.
    private static readonly TimeSpan s_patient = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan s_short = TimeSpan.FromSeconds(1);

    private DirectoryInfo _dir = null!;

    [SetUp]
    public void CreateDirectory() => _dir = Directory.CreateTempSubdirectory("vmm-conf-");

    [TearDown]
    public void RemoveDirectory() => _dir.Delete(recursive: true);

    // --- Passing back-ends ----------------------------------------------------------------------

    [Test]
    public async Task Our_blk_backend_on_a_socket_passes_every_check_and_leaves_the_image_unchanged()
    {
        byte[] image = WriteImage("disk.img", 8 << 20);
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(Path.Combine(_dir.FullName, "disk.img")));
        using VhostUserBackendServer server = VhostUserBackendServer.Bind(device, socket, NullLogger.Instance);
        using var stop = new CancellationTokenSource();
        Task serving = server.RunAsync(stop.Token);

        ConformanceReport report = await VhostUserConformance.RunAsync(socket, Options(VirtioDeviceId.Block));
        await stop.CancelAsync();
        await serving;

        Assert.That(report.Results.Where(r => r.Outcome != ConformanceOutcome.Pass), Is.Empty, Describe(report));
        Assert.That(report.Results.Select(r => r.Id), Is.EqualTo(VhostUserConformance.ChecksFor(VirtioDeviceId.Block).Select(c => c.Id)));
        Assert.That(report.Features, Is.Not.Null);
        Assert.That(File.ReadAllBytes(Path.Combine(_dir.FullName, "disk.img")), Is.EqualTo(image), "the checker wrote back only what it read");
    }

    [Test]
    public async Task Allow_writes_writes_a_pattern_and_restores_the_original()
    {
        byte[] image = WriteImage("disk.img", 8 << 20);
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(Path.Combine(_dir.FullName, "disk.img")));

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Block) with { AllowWrites = true });

        AssertOutcome(report, "blk-write", ConformanceOutcome.Pass, "wrote a 4 KiB pattern");
        Assert.That(File.ReadAllBytes(Path.Combine(_dir.FullName, "disk.img")), Is.EqualTo(image), "the original is back");
    }

    [Test]
    public async Task A_read_only_disk_must_refuse_the_write_with_IOERR()
    {
        byte[] image = WriteImage("disk.img", 8 << 20);
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(Path.Combine(_dir.FullName, "disk.img"), ReadOnly: true));

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Block));

        AssertOutcome(report, "blk-write", ConformanceOutcome.Pass, "refused with IOERR");
        Assert.That(File.ReadAllBytes(Path.Combine(_dir.FullName, "disk.img")), Is.EqualTo(image));
    }

    [Test]
    public async Task Our_rng_backend_passes_every_check_that_applies()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Entropy));

        Assert.That(report.Failed, Is.Zero, Describe(report));
        AssertOutcome(report, "request", ConformanceOutcome.Pass, "bytes of entropy");
        AssertOutcome(report, "config-sizes", ConformanceOutcome.NotApplicable, "no configuration space");
    }

    [Test]
    public async Task A_fuse_server_passes_the_fs_checks()
    {
        using var device = new FuseTestDevice();

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.FileSystem));

        Assert.That(report.Failed, Is.Zero, Describe(report));
        AssertOutcome(report, "request", ConformanceOutcome.Pass, "FUSE 7.31, max_write 131072");
        AssertOutcome(report, "queue-num", ConformanceOutcome.Pass, "the configuration space says 2");
    }

    [Test]
    public async Task A_device_type_without_a_known_request_gets_the_protocol_and_ring_checks()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device, null, Options((VirtioDeviceId)40));

        Assert.That(report.Failed, Is.Zero, Describe(report));
        AssertOutcome(report, "request", ConformanceOutcome.NotApplicable, "no request is known");
        AssertOutcome(report, "vring-base", ConformanceOutcome.Pass);
        AssertOutcome(report, "restart", ConformanceOutcome.Pass);
    }

    [Test]
    public async Task A_one_shot_backend_answers_every_check_but_the_second_connection()
    {
        using var device = new VirtioRngDevice();

        // The second connection is retried for the whole timeout: a short one keeps the test short.
        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Entropy, TimeSpan.FromSeconds(5)), maxConnections: 1);

        AssertOutcome(report, "second-connection", ConformanceOutcome.Fail, "cannot serve a reconnecting one");
        Assert.That(report.Results.Where(r => r.Id != "second-connection" && r.Outcome == ConformanceOutcome.Fail), Is.Empty, Describe(report));
        Assert.That(report.Passed, Is.GreaterThan(10), Describe(report));
    }

    // --- Each check can fail --------------------------------------------------------------------

    [Test]
    public async Task Handshake_fails_when_the_backend_hangs_up_on_GET_PROTOCOL_FEATURES()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device, e => e.Request == VhostUserRequest.GET_PROTOCOL_FEATURES ? Fault.Close : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "handshake", ConformanceOutcome.Fail, "closed the connection");
        AssertOutcome(report, "ring-start", ConformanceOutcome.NotApplicable, "not run");
    }

    [Test]
    public async Task Protocol_features_fails_without_bit_30()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_FEATURES ? Fault.Rewrite(p => U64(BinaryPrimitives.ReadUInt64LittleEndian(p) & ~(1UL << 30))) : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "handshake", ConformanceOutcome.Pass);
        AssertOutcome(report, "protocol-features", ConformanceOutcome.Fail, "lacks bit 30");
        AssertOutcome(report, "kick-before-enable", ConformanceOutcome.NotApplicable, "rings start enabled");
        Assert.That(report.Results.Where(r => r.Outcome == ConformanceOutcome.Fail).Select(r => r.Id), Is.EqualTo(new[] { "protocol-features" }), Describe(report));
    }

    [Test]
    public async Task Config_sizes_fails_on_a_reply_of_another_size_and_the_run_goes_on_with_a_new_connection()
    {
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(WriteImagePath(8 << 20)));

        // The 57-byte read is answered with 60 bytes, as a back-end that always sends its whole structure would.
        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_CONFIG && ConfigSize(e.Payload) == 57 ? Fault.Rewrite(p => Resize(p, 60)) : Fault.None,
            Options(VirtioDeviceId.Block));

        AssertOutcome(report, "config-sizes", ConformanceOutcome.Fail, "GET_CONFIG");
        AssertOutcome(report, "config-offset", ConformanceOutcome.Pass, "on a new connection");
        AssertOutcome(report, "request", ConformanceOutcome.Pass);
    }

    [Test]
    public async Task Config_offset_fails_when_the_offset_is_ignored()
    {
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(WriteImagePath(8 << 20)));
        byte[]? whole = null;

        ConformanceReport report = await RunAsync(device, e =>
        {
            if (e.Request != VhostUserRequest.GET_CONFIG)
            {
                return Fault.None;
            }

            uint offset = BinaryPrimitives.ReadUInt32LittleEndian(e.Payload);
            return offset == 0
                ? Fault.Rewrite(p => whole ??= p)
                : Fault.Rewrite(p => [.. p[..12], .. whole!.AsSpan(12, p.Length - 12)]);
        }, Options(VirtioDeviceId.Block));

        AssertOutcome(report, "config-offset", ConformanceOutcome.Fail, "the offset is ignored");
    }

    [Test]
    public async Task Queue_num_fails_when_it_is_below_what_the_config_announces()
    {
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(WriteImagePath(8 << 20), Queues: 2));

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_QUEUE_NUM ? Fault.Rewrite(_ => U64(1)) : Fault.None,
            Options(VirtioDeviceId.Block));

        AssertOutcome(report, "queue-num", ConformanceOutcome.Fail, "fewer than the 2 queues");
    }

    [Test]
    public async Task Inflight_fails_on_a_region_too_small_for_the_rings()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_INFLIGHT_FD ? Fault.Rewrite(p => [.. U64(64), .. p[8..]]) : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "inflight", ConformanceOutcome.Fail, "a 64-byte region");
    }

    [Test]
    public async Task Ring_start_fails_when_SET_VRING_ADDR_is_refused()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.SET_VRING_ADDR ? Fault.Nack() : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "ring-start", ConformanceOutcome.Fail, "rejected SET_VRING_ADDR");
        AssertOutcome(report, "request", ConformanceOutcome.NotApplicable, "rings could not be started");
    }

    [Test]
    public async Task Status_fails_when_GET_STATUS_forgets_what_was_set()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_STATUS ? Fault.Rewrite(_ => U64(0)) : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "status", ConformanceOutcome.Fail, "GET_STATUS answered 0x0");
    }

    [Test]
    public async Task Request_fails_for_an_rng_that_writes_nothing()
    {
        using var device = new EmptyRngDevice();

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "request", ConformanceOutcome.Fail, "reported 0 bytes written");
    }

    [Test]
    public async Task Request_fails_for_a_blk_read_that_ends_in_IOERR()
    {
        using var device = new FailingBlkDevice();

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Block));

        AssertOutcome(report, "request", ConformanceOutcome.Fail, "status 1, not OK");
        AssertOutcome(report, "blk-write", ConformanceOutcome.Fail, "status 1");
    }

    [Test]
    public async Task Request_fails_for_a_FUSE_reply_to_another_request()
    {
        using var device = new FuseTestDevice(wrongUnique: true);

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.FileSystem));

        AssertOutcome(report, "request", ConformanceOutcome.Fail, "the reply's unique is");
    }

    [Test]
    public async Task Request_fails_for_a_net_backend_that_does_not_echo()
    {
        using var device = new SinkNetDevice();

        ConformanceReport report = await RunAsync(device, null, Options(VirtioDeviceId.Net, s_short));

        AssertOutcome(report, "request", ConformanceOutcome.Fail, "none came back on the receive queue");
        AssertOutcome(report, "restart", ConformanceOutcome.Pass);
    }

    [Test]
    public async Task Blk_write_fails_when_a_read_only_disk_accepts_a_write()
    {
        // The disk is writable, but GET_FEATURES claims VIRTIO_BLK_F_RO.
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(WriteImagePath(8 << 20)));

        ConformanceReport report = await RunAsync(device, e => e.Request switch
        {
            VhostUserRequest.GET_FEATURES => Fault.Rewrite(p => U64(BinaryPrimitives.ReadUInt64LittleEndian(p) | VirtioBlkFeatures.RO)),
            VhostUserRequest.SET_FEATURES => Fault.RewriteRequest(p => U64(BinaryPrimitives.ReadUInt64LittleEndian(p) & ~VirtioBlkFeatures.RO)),
            _ => Fault.None,
        }, Options(VirtioDeviceId.Block));

        AssertOutcome(report, "blk-write", ConformanceOutcome.Fail, "not IOERR");
    }

    [Test]
    public async Task Config_write_fails_when_SET_CONFIG_is_refused()
    {
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(WriteImagePath(8 << 20)));

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.SET_CONFIG ? Fault.Nack() : Fault.None,
            Options(VirtioDeviceId.Block));

        AssertOutcome(report, "config-write", ConformanceOutcome.Fail, "rejected SET_CONFIG");
    }

    [Test]
    public async Task Mem_replace_fails_when_the_new_table_is_acked_but_not_used()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.SET_MEM_TABLE ? Fault.FakeAck : Fault.None,
            Options(VirtioDeviceId.Entropy, s_short));

        AssertOutcome(report, "mem-replace", ConformanceOutcome.Fail, "did not complete");
    }

    [Test]
    public async Task Mem_slots_fails_when_an_added_region_is_acked_but_not_mapped()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.ADD_MEM_REG && RegionGpa(e.Payload) == ConformanceRun.SlotRegionGpa ? Fault.FakeAck : Fault.None,
            Options(VirtioDeviceId.Entropy, s_short));

        AssertOutcome(report, "mem-replace", ConformanceOutcome.Pass);
        AssertOutcome(report, "mem-slots", ConformanceOutcome.Fail, "did not complete");
    }

    [Test]
    public async Task Vring_base_fails_on_a_base_other_than_the_buffers_used()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_VRING_BASE && e.Occurrence == 1
                ? Fault.Rewrite(p => State(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4)) + 3))
                : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "vring-base", ConformanceOutcome.Fail, "were made available and all were used");
    }

    [Test]
    public async Task Vring_base_fails_when_it_answers_for_another_ring()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_VRING_BASE && e.Occurrence == 1 ? Fault.Rewrite(p => State(5, BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4)))) : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "vring-base", ConformanceOutcome.Fail, "answered ring 5");
    }

    [Test]
    public async Task Restart_fails_when_the_new_kick_fd_is_acked_but_ignored()
    {
        using var device = new VirtioRngDevice();
        int stops = 0;

        ConformanceReport report = await RunAsync(device, e =>
        {
            stops += e.Request == VhostUserRequest.GET_VRING_BASE ? 1 : 0;
            return e.Request == VhostUserRequest.SET_VRING_KICK && stops == 1 ? Fault.FakeAck : Fault.None;
        }, Options(VirtioDeviceId.Entropy, s_short));

        AssertOutcome(report, "vring-base", ConformanceOutcome.Pass);
        AssertOutcome(report, "restart", ConformanceOutcome.Fail, "did not complete");
    }

    [Test]
    public async Task Kick_before_enable_fails_when_the_enable_after_a_pending_kick_is_ignored()
    {
        using var device = new VirtioRngDevice();
        bool pendingKick = false;

        ConformanceReport report = await RunAsync(device, e =>
        {
            if (e.Request == VhostUserRequest.SET_VRING_KICK)
            {
                pendingKick = e.FdReadable(0);
            }

            return e.Request == VhostUserRequest.SET_VRING_ENABLE && e.StateNum == 1 && pendingKick ? Fault.FakeAck : Fault.None;
        }, Options(VirtioDeviceId.Entropy, s_short));

        AssertOutcome(report, "restart", ConformanceOutcome.Pass);
        AssertOutcome(report, "kick-before-enable", ConformanceOutcome.Fail, "before SET_VRING_ENABLE(1)");
    }

    [Test]
    public async Task Reset_device_fails_when_RESET_DEVICE_is_refused()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.RESET_DEVICE ? Fault.Nack() : Fault.None,
            Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "reset-device", ConformanceOutcome.Fail, "rejected RESET_DEVICE");
    }

    [Test]
    public async Task Vring_base_twice_fails_when_the_second_answer_differs()
    {
        using var device = new VirtioRngDevice();
        VhostUserRequest? previous = null;

        ConformanceReport report = await RunAsync(device, e =>
        {
            // A GET_VRING_BASE right after another one (only the SET_VRING_ENABLE(0) between).
            bool again = e.Request == VhostUserRequest.GET_VRING_BASE && previous == VhostUserRequest.GET_VRING_BASE;
            if (e.Request != VhostUserRequest.SET_VRING_ENABLE)
            {
                previous = e.Request;
            }

            return again
                ? Fault.Rewrite(p => State(BinaryPrimitives.ReadUInt32LittleEndian(p), BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(4)) + 1))
                : Fault.None;
        }, Options(VirtioDeviceId.Entropy));

        AssertOutcome(report, "vring-base", ConformanceOutcome.Pass);
        AssertOutcome(report, "vring-base-twice", ConformanceOutcome.Fail, "on the stopped ring");
    }

    [Test]
    public async Task Config_bounds_fails_when_an_oversized_read_is_answered_with_the_structure()
    {
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(WriteImagePath(8 << 20)));

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.GET_CONFIG && ConfigSize(e.Payload) > 60 ? Fault.Rewrite(_ => ConfigReply(60)) : Fault.None,
            Options(VirtioDeviceId.Block));

        AssertOutcome(report, "config-bounds", ConformanceOutcome.Fail, "MUST be as large as the request");
    }

    [Test]
    public async Task Reply_ack_fails_when_an_ack_never_comes()
    {
        using var device = new VirtioRngDevice();

        ConformanceReport report = await RunAsync(device,
            e => e.Request == VhostUserRequest.SET_VRING_CALL && e.Occurrence == 1 ? Fault.DropReply : Fault.None,
            Options(VirtioDeviceId.Entropy, s_short));

        AssertOutcome(report, "ring-start", ConformanceOutcome.Fail, "did not complete SET_VRING_CALL");
        AssertOutcome(report, "reply-ack", ConformanceOutcome.Fail, "did not complete SET_VRING_CALL");
        AssertOutcome(report, "status", ConformanceOutcome.Pass, "on a new connection: the previous one ended in ring-start");
    }

    [Test]
    public void The_checks_are_listed_per_device_type_with_their_spec_sections()
    {
        IReadOnlyList<ConformanceCheck> blk = VhostUserConformance.ChecksFor(VirtioDeviceId.Block);
        IReadOnlyList<ConformanceCheck> rng = VhostUserConformance.ChecksFor(VirtioDeviceId.Entropy);

        Assert.That(blk.Select(c => c.Id), Does.Contain("blk-write"));
        Assert.That(rng.Select(c => c.Id), Does.Not.Contain("blk-write"));
        Assert.That(blk.Select(c => c.Id), Is.Unique);
        Assert.That(blk[^1].Id, Is.EqualTo("second-connection"), "the check that ends one-shot back-ends runs last");
        Assert.That(blk.Select(c => c.Spec), Has.All.StartsWith("vhost-user.rst").Or.StartsWith("virtio 1.2"));
    }

    [Test]
    public async Task An_unreachable_socket_is_an_exception_not_a_report()
    {
        string missing = Path.Combine(_dir.FullName, "nothing.sock");

        await Assert.ThrowsAsync<FileNotFoundException>(() => VhostUserConformance.RunAsync(missing, Options(VirtioDeviceId.Block)));
    }

    // --- Helpers --------------------------------------------------------------------------------

    private static ConformanceOptions Options(VirtioDeviceId type, TimeSpan? timeout = null) =>
        new() { DeviceType = type, Timeout = timeout ?? s_patient };

    private static async Task<ConformanceReport> RunAsync(
        IVirtioDevice device, Func<Exchange, Fault>? rule, ConformanceOptions options, int maxConnections = int.MaxValue)
    {
        await using var backend = new FaultyBackend(device, rule, maxConnections);
        return await VhostUserConformance.RunAsync(backend.ConnectAsync, "faulty back-end", options);
    }

    private byte[] WriteImage(string name, int size)
    {
        byte[] bytes = RandomNumberGenerator.GetBytes(size);
        File.WriteAllBytes(Path.Combine(_dir.FullName, name), bytes);
        return bytes;
    }

    private string WriteImagePath(int size)
    {
        WriteImage("disk.img", size);
        return Path.Combine(_dir.FullName, "disk.img");
    }

    private static void AssertOutcome(ConformanceReport report, string id, ConformanceOutcome outcome, string? why = null)
    {
        ConformanceResult result = report[id];
        Assert.That(result.Outcome, Is.EqualTo(outcome), $"{id}: {result.Why}\n{Describe(report)}");
        if (why is not null)
        {
            Assert.That(result.Why, Does.Contain(why), $"{id}\n{Describe(report)}");
        }
    }

    /// <summary>Whether the client acks STATUS, so the status check runs rather than being N/A.</summary>

    private static string Describe(ConformanceReport report) =>
        string.Join('\n', report.Results.Select(r => $"{r.Id,-20} {r.Outcome,-13} {r.Why}"));

    private static byte[] U64(ulong value) => BitConverter.GetBytes(value);

    private static byte[] State(uint index, uint num)
    {
        byte[] b = new byte[VhostUserVringState.Size];
        new VhostUserVringState(index, num).Write(b);
        return b;
    }

    private static uint ConfigSize(byte[] payload) => BinaryPrimitives.ReadUInt32LittleEndian(payload.AsSpan(4));

    private static byte[] ConfigReply(int size)
    {
        byte[] reply = new byte[VhostUserConfig.HeaderSize + size];
        VhostUserConfig.WritePayload(reply, 0, VhostUserConfigFlags.FRONTEND, new byte[size]);
        return reply;
    }

    private static byte[] Resize(byte[] configReply, int size)
    {
        byte[] reply = ConfigReply(size);
        configReply.AsSpan(VhostUserConfig.HeaderSize, Math.Min(size, configReply.Length - VhostUserConfig.HeaderSize)).CopyTo(reply.AsSpan(VhostUserConfig.HeaderSize));
        return reply;
    }

    // struct VhostUserSingleMemoryRegion: 8 bytes of padding, then guest_phys_addr.
    private static ulong RegionGpa(byte[] payload) => BinaryPrimitives.ReadUInt64LittleEndian(payload.AsSpan(8));
}

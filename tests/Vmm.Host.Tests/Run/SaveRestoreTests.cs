using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using NUnit.Framework;
using Vmm.Host.Cli;
using Vmm.Core.Memory;
using Vmm.Host.Run;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;

namespace Vmm.Host.Tests.Run;

/// <summary><c>vmm run --save/--restore</c> (docs/save-restore.md): in-process and across processes.</summary>
[TestFixture]
public sealed class SaveRestoreTests
{
    private const int ImageSize = 1 << 20;
    private const int BlockSize = 8192;

    [Test]
    public void Verify_saved_part_way_resumes_in_a_new_vm_and_the_image_holds_the_pattern([Values(false, true)] bool packed)
    {
        using var image = new TempImage(ImageSize, seed: 41);
        string snapshot = Path.Combine(Path.GetTempPath(), $"vmm-snap-{Guid.NewGuid():N}");
        try
        {
            RunOptions first = Options(image, packed) with { SaveRestore = new SaveRestoreSettings(snapshot, 40, null) };
            var output = new StringWriter();
            Assert.That(RunCommand.Execute(first, output, CancellationToken.None), Is.Zero);
            Assert.That(output.ToString(), Does.StartWith("save: verify paused after 40 of 256 requests"));
            Assert.That(image.Read().AsSpan(0, 40 * BlockSize).SequenceEqual(Expected().AsSpan(0, 40 * BlockSize)), Is.True, "the first 40 writes landed");
            Assert.That(image.Read().AsSpan(40 * BlockSize).SequenceEqual(Expected().AsSpan(40 * BlockSize)), Is.False, "and no more");

            VmSnapshot saved = SaveRestoreFile.Read(snapshot);
            Assert.That(saved.Workload, Is.EqualTo(new WorkloadProgress(RunWorkload.Verify, 40, 256)));
            Assert.That(saved.Devices[0].State, Is.EqualTo(new byte[] { 1 }), "the in-process device's SaveState (writeback on)");
            Assert.That(saved.Machine.PackedRing, Is.EqualTo(packed));

            // The restore's command line gives only the device: the snapshot brings the rest.
            RunOptions second = RunOptionsFor(image) with { SaveRestore = new SaveRestoreSettings(null, null, snapshot) };
            output = new StringWriter();
            Assert.That(RunCommand.Execute(second, output, CancellationToken.None), Is.Zero);
            Assert.That(output.ToString(), Does.StartWith("verify:").And.Contain("equal (resumed at request 40 of 256)"));
            Assert.That(image.Read(), Is.EqualTo(Expected()));
        }
        finally
        {
            File.Delete(snapshot);
        }
    }

    [Test]
    public void A_restore_can_save_again_in_the_read_phase_and_a_third_vm_finishes()
    {
        using var image = new TempImage(ImageSize, seed: 42);
        string a = Path.GetTempFileName();
        string b = Path.GetTempFileName();
        try
        {
            Assert.That(RunCommand.Execute(Options(image, false) with { SaveRestore = new(a, 10, null) }, TextWriter.Null, CancellationToken.None), Is.Zero);
            Assert.That(RunCommand.Execute(RunOptionsFor(image) with { SaveRestore = new(b, 200, a) }, TextWriter.Null, CancellationToken.None), Is.Zero);
            Assert.That(SaveRestoreFile.Read(b).Workload.Done, Is.EqualTo(200));
            var output = new StringWriter();
            Assert.That(RunCommand.Execute(RunOptionsFor(image) with { SaveRestore = new(null, null, b) }, output, CancellationToken.None), Is.Zero);
            Assert.That(output.ToString(), Does.Contain("equal (resumed at request 200 of 256)"));
            Assert.That(image.Read(), Is.EqualTo(Expected()));
        }
        finally
        {
            File.Delete(a);
            File.Delete(b);
        }
    }

    [Test]
    public void A_live_save_pre_copies_while_verify_runs_and_the_restore_finishes([Values(false, true)] bool packed)
    {
        // 4 MiB in 4 KiB blocks: 2048 requests, the save starts during the writes.
        const int size = 4 << 20;
        using var image = new TempImage(size, seed: 46);
        string snapshot = Path.Combine(Path.GetTempPath(), $"vmm-snap-{Guid.NewGuid():N}");
        try
        {
            RunOptions first = RunOptionsFor(image) with
            {
                PackedRing = packed,
                BlockSize = 4096,
                IoDepth = 8,
                SaveRestore = new SaveRestoreSettings(snapshot, 300, null) { Live = true },
            };
            var output = new StringWriter();
            Assert.That(RunCommand.Execute(first, output, CancellationToken.None), Is.Zero);
            Assert.That(output.ToString(), Does.Match(@"^save: verify paused after \d+ of 2048 requests"));
            WorkloadProgress progress = SaveRestoreFile.Read(snapshot).Workload;
            Assert.That(progress.Done, Is.GreaterThanOrEqualTo(300).And.LessThan(2048), "paused after the trigger, before the end");

            output = new StringWriter();
            Assert.That(RunCommand.Execute(RunOptionsFor(image) with { SaveRestore = new SaveRestoreSettings(null, null, snapshot) }, output, CancellationToken.None), Is.Zero);
            Assert.That(output.ToString(), Does.Contain($"equal (resumed at request {progress.Done} of 2048)"));
            byte[] expected = new byte[size];
            VerifyPattern.Fill(expected, 0);
            Assert.That(image.Read().AsSpan().SequenceEqual(expected), Is.True, "the image holds the whole pattern");
        }
        finally
        {
            File.Delete(snapshot);
        }
    }

    [Test]
    public void A_live_save_against_vmm_serve_prints_its_rounds_and_the_restore_finishes()
    {
        const int size = 8 << 20;
        using var image = new TempImage(size, seed: 47);
        DirectoryInfo dir = Directory.CreateTempSubdirectory("vmm-sr-");
        string snapshot = Path.Combine(dir.FullName, "snap");
        try
        {
            VmmProcess.Result saved;
            using (Serve first = Serve.Start(Path.Combine(dir.FullName, "a.sock"), image.Path))
            {
                saved = VmmProcess.Run("run", "--vhost-user", $"{first.Socket},type=blk", "--memory", "32M", "--block-size", "4k", "--iodepth", "8",
                    "--save", snapshot, "--save-after", "2500", "--live", "--live-threshold", "32", "--live-rounds", "4");
            }

            Assert.That(saved.ExitCode, Is.Zero, saved.Stderr);
            Assert.That(saved.Stderr, Does.Match(@"vmm: live save: \d+ pre-copy round\(s\) of [\d, ]+ pages.*stopped for \d+ ms, copying \d+ pages at the stop"));
            long done = SaveRestoreFile.Read(snapshot).Workload.Done;

            VmmProcess.Result restored;
            using (Serve second = Serve.Start(Path.Combine(dir.FullName, "b.sock"), image.Path))
            {
                restored = VmmProcess.Run("run", "--vhost-user", $"{second.Socket},type=blk", "--restore", snapshot);
            }

            Assert.That(restored.ExitCode, Is.Zero, restored.Stderr);
            Assert.That(restored.Stdout, Does.Contain($"equal (resumed at request {done} of 4096)"));
            byte[] expected = new byte[size];
            VerifyPattern.Fill(expected, 0);
            Assert.That(image.Read().AsSpan().SequenceEqual(expected), Is.True, "the image holds the whole pattern");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [TestCase("--live", "--live needs --save FILE.")]
    [TestCase("--save x --live-rounds 3", "--live-threshold and --live-rounds need --live.")]
    [TestCase("--save x --live --live-rounds 0", "--live-rounds must be from 1 to 1000.")]
    public void Live_options_out_of_place_are_one_sentence_and_exit_2(string options, string message)
    {
        VmmProcess.Result r = VmmProcess.Run(["run", "--device", "blk,disk=/dev/null", .. options.Split(' ')]);
        Assert.That(r.ExitCode, Is.EqualTo(2));
        Assert.That(r.Stderr, Does.Contain(message));
    }

    [Test]
    public void A_snapshot_round_trips_through_the_file_format()
    {
        var snapshot = new VmSnapshot(
            new MachineSnapshot(16 << 20, true, false, true, true, 4096, 8),
            [new MemoryPage(0x2000, Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray())],
            [new DeviceSnapshotRecord("blk", 2, 0x1234, [new QueueRecord(new VirtqueueParams(256, 0x100000, 0x101000, 0x102000), new VirtqueueState(7, 7))], [1], [9, 9])],
            new WorkloadProgress(RunWorkload.Verify, 3, 10));
        string path = Path.GetTempFileName();
        try
        {
            SaveRestoreFile.Write(path, snapshot);
            VmSnapshot back = SaveRestoreFile.Read(path);
            Assert.Multiple(() =>
            {
                Assert.That(back.Machine, Is.EqualTo(snapshot.Machine));
                Assert.That(back.Pages[0].Data, Is.EqualTo(snapshot.Pages[0].Data));
                Assert.That(back.Devices[0].Queues, Is.EqualTo(snapshot.Devices[0].Queues));
                Assert.That((back.Devices[0].State, back.Devices[0].Inflight), Is.EqualTo((new byte[] { 1 }, new byte[] { 9, 9 })));
                Assert.That(back.Workload, Is.EqualTo(snapshot.Workload));
            });

            byte[] bytes = File.ReadAllBytes(path);
            foreach (int cut in new[] { 0, 10, 47, bytes.Length / 2, bytes.Length - 1 })
            {
                Assert.That(() => SaveRestoreFile.Parse(bytes.AsSpan(0, cut)), Throws.InstanceOf<InvalidDataException>(), $"cut at {cut}");
            }

            byte[] flipped = (byte[])bytes.Clone();
            flipped[100] ^= 1;
            Assert.That(() => SaveRestoreFile.Parse(flipped), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("checksum"));

            // A size that lies, under a valid checksum, is caught before anything is allocated:
            // the memory section's page count (after its 16-byte section header and page size).
            int machineSection = SaveRestoreFile.HeaderSize + SaveRestoreFile.SectionHeaderSize + 8 + 4 + 8;
            int pageCount = machineSection + SaveRestoreFile.SectionHeaderSize + 4;
            byte[] lying = (byte[])bytes.Clone();
            BinaryPrimitives.WriteInt32LittleEndian(lying.AsSpan(pageCount), 4000);
            SHA256.HashData(lying.AsSpan(0, lying.Length - 32)).CopyTo(lying.AsSpan(lying.Length - 32));
            Assert.That(() => SaveRestoreFile.Parse(lying), Throws.InstanceOf<InvalidDataException>().With.Message.Contains("do not fit"));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void A_corrupt_or_truncated_snapshot_is_one_sentence_and_exit_2()
    {
        using var image = new TempImage(ImageSize, seed: 43);
        string snapshot = Path.GetTempFileName();
        try
        {
            Assert.That(RunCommand.Execute(Options(image, false) with { SaveRestore = new(snapshot, 5, null) }, TextWriter.Null, CancellationToken.None), Is.Zero);
            byte[] bytes = File.ReadAllBytes(snapshot);
            File.WriteAllBytes(snapshot, bytes[..(bytes.Length / 3)]);
            VmmProcess.Result truncated = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", "--restore", snapshot);
            Assert.That(truncated.ExitCode, Is.EqualTo(2));
            Assert.That(truncated.StderrLines, Has.Length.EqualTo(1));
            Assert.That(truncated.Stderr, Does.Contain("is not usable").And.Contain("checksum"));

            VmmProcess.Result missing = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", "--restore", snapshot + ".none");
            Assert.That((missing.ExitCode, missing.StderrLines.Length), Is.EqualTo((2, 1)));

            VmmProcess.Result wrongWorkload = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", "--workload", "checksum", "--save", snapshot);
            Assert.That((wrongWorkload.ExitCode, wrongWorkload.StderrLines.Length), Is.EqualTo((2, 1)));
        }
        finally
        {
            File.Delete(snapshot);
        }
    }

    /// <remarks>
    /// avail_event is the device's word in the used ring (virtio 1.2, 2.7.10): a back-end that
    /// writes it only when it takes a buffer (libvhost-user, hence qemu-storage-daemon) is never
    /// kicked if the restore zeroes it, and the restored queue's requests are never completed.
    /// </remarks>
    [Test]
    public void A_restored_split_ring_keeps_the_avail_event_the_backend_wrote_and_the_driver_kicks_for_it()
    {
        const ushort Size = 256;
        const ushort Stopped = 1000;
        ulong features = VirtioFeatures.VERSION_1 | VirtioFeatures.RING_EVENT_IDX;
        using GuestMemory memory = GuestMemory.Create(1 << 20);
        IDriverQueue saved = DriverQueue.Create(memory, new GuestMemoryAllocator(0x1000, (1 << 20) - 0x1000), Size, features);
        ulong availEvent = saved.Params.DeviceArea + (ulong)VirtqueueLayout.SplitAvailEventOffset(Size);
        memory.WriteUInt16(availEvent, Stopped); // the saving back-end took entry 999 last and asks for a kick at entry 1000
        var record = new DeviceSnapshotRecord(
            "blk", (ushort)VirtioDeviceId.Block, features, [new QueueRecord(saved.Params, new VirtqueueState(Stopped, Stopped))], [], []);

        IDriverQueue restored = new RestoringQueueFactory(memory, new GuestMemoryAllocator(0x1000, (1 << 20) - 0x1000), record)
            .Create(0, Size, features);

        Assert.That(restored.Params, Is.EqualTo(saved.Params));
        Assert.That(memory.ReadUInt16(availEvent), Is.EqualTo(Stopped), "the device's avail_event is the restored one");
        Assert.That(restored.TrySubmit([new DriverBuffer(0x80000, 16, false)], "request"), Is.True);
        Assert.That(restored.NeedsKick(), Is.True, "the entry at 1000 is the one the back-end asked to be kicked for");
    }

    [Test]
    public void Saved_in_one_process_against_one_backend_restored_in_another_against_a_fresh_backend([Values(false, true)] bool packed)
    {
        using var image = new TempImage(ImageSize, seed: 44);
        DirectoryInfo dir = Directory.CreateTempSubdirectory("vmm-sr-");
        string snapshot = Path.Combine(dir.FullName, "snap");
        try
        {
            VmmProcess.Result saved;
            using (Serve first = Serve.Start(Path.Combine(dir.FullName, "a.sock"), image.Path))
            {
                string[] args = ["run", "--vhost-user", $"{first.Socket},type=blk", "--memory", "32M", "--block-size", "2k", "--iodepth", "8", "--save", snapshot, "--save-after", "300"];
                saved = VmmProcess.Run(packed ? [.. args, "--packed"] : args);
            }

            Assert.That(saved.ExitCode, Is.Zero, saved.Stderr);
            // 300 requests of at least one ring slot each: past the end of a
            // 256-slot packed ring, so the wrap counters have flipped.
            Assert.That(saved.Stdout, Does.StartWith("save: verify paused after 300 of 1024 requests"));

            // The back-end's own state came over DEVICE_STATE: our frame around VirtioBlkDevice.SaveState.
            VmSnapshot file = SaveRestoreFile.Read(snapshot);
            Assert.That(DeviceStateFrame.Decode(file.Devices[0].State, (ushort)VirtioDeviceId.Block).ToArray(), Is.EqualTo(new byte[] { 1 }));
            byte[] inflight = file.Devices[0].Inflight;
            Assert.That(inflight, Is.Not.Empty, "the inflight region's bytes are kept");
            Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(inflight.AsSpan(8)), Is.EqualTo(1), "region version");
            Assert.That(file.Machine.PackedRing, Is.EqualTo(packed));
            VirtqueueState stopped = file.Devices[0].Queues[0].State;
            if (packed)
            {
                // QueueRegionPacked: used_idx at 16, used_wrap_counter at 20.
                Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(inflight.AsSpan(16)), Is.EqualTo(stopped.UsedIndex), "its used_idx agrees with the ring");
                Assert.That(inflight[20] != 0, Is.EqualTo(stopped.UsedWrapCounter));
            }
            else
            {
                // QueueRegionSplit: used_idx at 14.
                Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(inflight.AsSpan(14)), Is.EqualTo(stopped.UsedIndex), "its used_idx agrees with the ring");
            }

            VmmProcess.Result restored;
            using (Serve second = Serve.Start(Path.Combine(dir.FullName, "b.sock"), image.Path))
            {
                restored = VmmProcess.Run("run", "--vhost-user", $"{second.Socket},type=blk", "--restore", snapshot);
            }

            Assert.That(restored.ExitCode, Is.Zero, restored.Stderr);
            Assert.That(restored.Stdout, Does.Contain("equal (resumed at request 300 of 1024)"));
            Assert.That(image.Read(), Is.EqualTo(Expected()));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Test]
    public void SIGUSR1_saves_mid_verify_and_the_restore_finishes()
    {
        // 64 MiB in 512-byte writes at depth 1: far more writes than can complete between the
        // ready line and the signal.
        const int size = 64 << 20;
        using var image = new TempImage(size, seed: 45);
        DirectoryInfo dir = Directory.CreateTempSubdirectory("vmm-sr-");
        string snapshot = Path.Combine(dir.FullName, "snap");
        try
        {
            var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = VmmProcess.RepoRoot,
            };
            foreach (string a in new[] { "run", "--device", $"blk,disk={image.Path}", "--memory", "16M", "--block-size", "512", "--iodepth", "1", "--save", snapshot })
            {
                start.ArgumentList.Add(a);
            }

            using Process process = Process.Start(start)!;
            string? line = process.StandardError.ReadLine();
            Assert.That(line, Does.StartWith("vmm: verify running; SIGUSR1 saves"));
            Assert.That(Mono.Unix.Native.Syscall.kill(process.Id, Mono.Unix.Native.Signum.SIGUSR1), Is.Zero);
            string stdout = process.StandardOutput.ReadToEnd();
            Assert.That(process.WaitForExit(TimeSpan.FromMinutes(2)), Is.True);
            Assert.That(process.ExitCode, Is.Zero, process.StandardError.ReadToEnd());
            Assert.That(stdout, Does.Match(@"^save: verify paused after \d+ of 262144 requests"));

            WorkloadProgress progress = SaveRestoreFile.Read(snapshot).Workload;
            Assert.That(progress.Done, Is.GreaterThanOrEqualTo(0).And.LessThan(progress.Total), "paused before the end (possibly before the first request)");

            VmmProcess.Result restored = VmmProcess.Run("run", "--device", $"blk,disk={image.Path}", "--restore", snapshot);
            Assert.That(restored.ExitCode, Is.Zero, restored.Stderr);
            Assert.That(restored.Stdout, Does.Contain($"equal (resumed at request {progress.Done} of 262144)"));
            byte[] expected = new byte[size];
            VerifyPattern.Fill(expected, 0);
            Assert.That(image.Read().AsSpan().SequenceEqual(expected), Is.True, "the image holds the whole pattern");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static byte[] Expected()
    {
        byte[] expected = new byte[ImageSize];
        VerifyPattern.Fill(expected, 0);
        return expected;
    }

    private static RunOptions RunOptionsFor(TempImage image) => new()
    {
        Devices = [new InProcessDeviceSource(DeviceSpec.Parse($"blk,disk={image.Path}"))],
        MemorySize = 32 << 20,
    };

    private static RunOptions Options(TempImage image, bool packed) => RunOptionsFor(image) with
    {
        PackedRing = packed,
        BlockSize = BlockSize,
        IoDepth = 8,
    };

    /// <summary>A <c>./vmm serve blk</c> child process; killed (by its own id) on dispose.</summary>
    private sealed class Serve : IDisposable
    {
        private readonly Process _process;

        private Serve(Process process, string socket)
        {
            _process = process;
            Socket = socket;
        }

        public string Socket { get; }

        public static Serve Start(string socket, string disk)
        {
            var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = VmmProcess.RepoRoot,
            };
            foreach (string a in new[] { "serve", "blk", "--socket", socket, "--disk", disk })
            {
                start.ArgumentList.Add(a);
            }

            Process process = Process.Start(start)!;
            process.OutputDataReceived += (_, _) => { };
            process.ErrorDataReceived += (_, _) => { };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            var deadline = Stopwatch.StartNew();
            while (!File.Exists(socket))
            {
                if (process.HasExited || deadline.Elapsed > TimeSpan.FromMinutes(2))
                {
                    process.Dispose();
                    Assert.Fail($"vmm serve blk did not create {socket}");
                }

                Thread.Sleep(50);
            }

            return new Serve(process, socket);
        }

        public void Dispose()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(TimeSpan.FromSeconds(10));
            }

            _process.Dispose();
        }
    }
}

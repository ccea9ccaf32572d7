using System.Runtime.InteropServices;
using System.Text;
using NUnit.Framework;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Driver.Fs;

/// <summary>
/// The virtio-fs guest driver against an in-process device (<see cref="FakeFsDevice"/>): every
/// operation on good replies, and every kind of bad reply (short, oversized, inconsistent, wrong
/// unique id, impossible values, error codes), timeouts and aborts.
/// </summary>
[TestFixture]
public sealed class VirtioFsSessionTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private FakeFsDevice _device = null!;
    private DeviceGuest _guest = null!;
    private VirtioFsSession _session = null!;

    private MemFs Fs => _device.Fs;

    [TearDown]
    public void TearDown()
    {
        _device?.ReleaseHeld();
        _session?.Dispose();
        _guest?.Dispose();
        _device?.Dispose();
    }

    [TestCase(false)]
    [TestCase(true)]
    public void Session_must_create_write_read_list_rename_remove_and_forget_every_lookup(bool packed)
    {
        Start(packed: packed);
        FuseInitResult init = _session.Initialize();
        Assert.That(init.Minor, Is.EqualTo(36), "the lower of 7.36 and the device's 7.38");
        Assert.That(init.MaxWrite, Is.EqualTo(64 * 1024));
        Assert.That(init.MaxRead, Is.EqualTo(4 * 4096), "max_pages 4 with FUSE_MAX_PAGES");
        Assert.That(_session.ReadDirPlusGranted, Is.True);

        FuseEntry dir = _session.Mkdir(Fuse.RootId, "d"u8, 0x1ED);
        (FuseEntry file, FuseHandle handle) = _session.Create(dir.NodeId, "f"u8, Fuse.O_RDWR, 0x1A4);
        byte[] content = Pattern(150_000);
        _session.WriteAll(handle, 0, content);
        _session.Fsync(handle);
        _session.Flush(handle);
        _session.Release(handle, Fuse.O_RDWR);
        Assert.That(Fs.FileContent("d/f"), Is.EqualTo(content));
        int writes = _device.Seen.Count(r => r.Opcode == FuseOpcode.FUSE_WRITE);
        Assert.That(writes, Is.EqualTo(3), "150,000 bytes in WRITEs of at most max_write (65,536)");

        FuseHandle reader = _session.Open(file.NodeId, Fuse.O_RDONLY);
        var back = new List<byte>();
        var buffer = new byte[init.MaxRead];
        int got;
        while ((got = _session.Read(reader, (ulong)back.Count, buffer)) > 0)
        {
            back.AddRange(buffer.AsSpan(0, got).ToArray());
        }

        _session.Release(reader, Fuse.O_RDONLY);
        Assert.That(back, Is.EqualTo(content));
        Assert.That(_session.GetAttr(file.NodeId).FileSize, Is.EqualTo((ulong)content.Length));

        FuseHandle listing = _session.OpenDir(dir.NodeId);
        IReadOnlyList<FuseDirectoryEntry> entries = _session.ReadDirPlus(listing, 0);
        Assert.That(entries.Select(e => Encoding.UTF8.GetString(e.Name)), Is.EqualTo(new[] { ".", "..", "f" }));
        Assert.That(entries[2].Entry?.NodeId, Is.EqualTo(file.NodeId));
        Assert.That(entries[0].Entry, Is.Null, "no entry, and no lookup, for '.'");
        Assert.That(_session.ReadDirPlus(listing, entries[^1].Offset), Is.Empty);
        _session.ReleaseDir(listing);
        _session.Forget(file.NodeId);

        _session.Rename(dir.NodeId, "f"u8, Fuse.RootId, "g"u8);
        Assert.That(Fs.FileContent("g"), Is.EqualTo(content));
        Assert.That(_session.Lookup(dir.NodeId, "f"u8), Is.Null);
        FuseStatFs statfs = _session.StatFs();
        Assert.That(statfs.BlockSize, Is.EqualTo(4096u));
        _session.Unlink(Fuse.RootId, "g"u8);
        _session.Rmdir(Fuse.RootId, "d"u8);
        Assert.That(Fs.Exists("d"), Is.False);

        _session.Dispose();
        Assert.That(Fs.Lookups, Is.Empty, "every lookup the device handed out was forgotten");
        Assert.That(Fs.Errors, Is.Empty);
        Assert.That(Fs.Destroyed, Is.True, "DESTROY at the end, as Linux sends at unmount");
        Assert.That(_device.Seen.Where(r => r.Opcode == FuseOpcode.FUSE_FORGET).Select(r => r.Queue), Is.Not.Empty.And.All.EqualTo(VirtioFs.HiprioQueue));
        Assert.That(_device.Seen.Where(r => r.Opcode != FuseOpcode.FUSE_FORGET).Select(r => r.Queue), Is.All.EqualTo(VirtioFs.FirstRequestQueue));
    }

    [Test]
    public void Unique_ids_must_advance_by_two_and_requests_carry_their_length()
    {
        Start();
        _session.Initialize();
        _session.StatFs();
        _session.StatFs();
        ulong[] uniques = [.. _device.Seen.Select(r => r.Unique)];
        Assert.That(uniques, Is.EqualTo(new ulong[] { 2, 4, 6 }));
    }

    [Test]
    public void Lookup_must_return_null_for_ENOENT_and_for_node_id_0_and_throw_other_errors()
    {
        Start();
        _session.Initialize();
        Assert.That(_session.Lookup(Fuse.RootId, "absent"u8), Is.Null);

        Intercept(FuseOpcode.FUSE_LOOKUP, r => FakeFuseReply.Ok(r.Unique, new FuseEntryOut { NodeId = 0 }));
        Assert.That(_session.Lookup(Fuse.RootId, "negative"u8), Is.Null, "node id 0 is a negative entry");

        Intercept(FuseOpcode.FUSE_LOOKUP, r => FakeFuseReply.Error(r.Unique, Errno.EACCES));
        var error = Assert.Throws<FuseErrorException>(() => _session.Lookup(Fuse.RootId, "secret"u8));
        Assert.That(error!.Errno, Is.EqualTo(Errno.EACCES));
        Assert.That(error.Message, Does.Contain("EACCES"));
        Assert.That(_session.LostReason, Is.Null, "an error reply is the request's outcome, not the session's end");
    }

    [Test]
    public void Flush_and_fsync_answered_ENOSYS_must_count_as_done_and_not_be_sent_again()
    {
        Start();
        _session.Initialize();
        (_, FuseHandle handle) = _session.Create(Fuse.RootId, "f"u8, Fuse.O_RDWR, 0x1A4);
        Intercept(FuseOpcode.FUSE_FLUSH, r => FakeFuseReply.Error(r.Unique, Errno.ENOSYS));
        _session.Flush(handle);
        _session.Flush(handle);
        Assert.That(_device.Seen.Count(r => r.Opcode == FuseOpcode.FUSE_FLUSH), Is.EqualTo(1));
    }

    [Test]
    public void Init_must_refuse_another_major_version_and_minor_versions_before_31()
    {
        Start();
        Intercept(FuseOpcode.FUSE_INIT, r => FakeFuseReply.Ok(r.Unique, new FuseInitOut { Major = 7, Minor = 30, MaxWrite = 65536 }));
        var e = Assert.Throws<FuseProtocolException>(() => _session.Initialize());
        Assert.That(e!.Message, Does.Contain("FUSE 7.30"));

        Start();
        Intercept(FuseOpcode.FUSE_INIT, r => FakeFuseReply.Ok(r.Unique, new FuseInitOut { Major = 8, Minor = 0 }));
        Assert.That(() => _session.Initialize(), Throws.TypeOf<FuseProtocolException>().With.Message.Contains("FUSE 8.0"));
    }

    [Test]
    public void Init_without_readdirplus_must_list_with_readdir()
    {
        Start();
        Fs.GrantedFlags = Fuse.FUSE_MAX_PAGES;
        Fs.AddFile("x", [1, 2, 3]);
        _session.Initialize();
        Assert.That(_session.ReadDirPlusGranted, Is.False);
        FuseHandle root = _session.OpenDir(Fuse.RootId);
        IReadOnlyList<FuseDirectoryEntry> entries = _session.ReadDir(root, 0);
        Assert.That(entries.Select(e => Encoding.UTF8.GetString(e.Name)), Is.EqualTo(new[] { ".", "..", "x" }));
        Assert.That(entries.Select(e => e.Entry), Is.All.Null);
    }

    // Each case: an opcode, and a reply that breaks a rule. The driver must refuse it before using
    // anything in it and end the session.
    private static IEnumerable<TestCaseData> MalformedReplies()
    {
        TestCaseData Case(string name, FuseOpcode op, Func<FuseRequestSeen, FakeFuseReply> reply, string message) =>
            new TestCaseData(op, reply, message).SetName($"Malformed_reply_must_end_the_session: {name}");

        yield return Case("short: 8 bytes, less than an out header", FuseOpcode.FUSE_GETATTR, r => FakeFuseReply.Raw(16, 0, r.Unique, []) with { ReportedWritten = 8 }, "shorter than the 16-byte fuse_out_header");
        yield return Case("oversized: more written than the buffers hold", FuseOpcode.FUSE_GETATTR, r => FakeFuseReply.Ok(r.Unique, new FuseAttrOut { Attr = RegularAttr() }) with { ReportedWritten = 4096 }, "bytes written into 120 bytes of buffers");
        yield return Case("len says more than was written", FuseOpcode.FUSE_STATFS, r => FakeFuseReply.Raw(200, 0, r.Unique, new byte[80]), "fuse_out_header.len is 200 but the device wrote 96 bytes");
        yield return Case("wrong unique id", FuseOpcode.FUSE_STATFS, r => FakeFuseReply.Ok(r.Unique + 2, new byte[80]), "carries unique id");
        yield return Case("positive error", FuseOpcode.FUSE_STATFS, r => FakeFuseReply.Raw(16, 5, r.Unique, []), "error 5 is not 0 or a negated errno");
        yield return Case("error below -511", FuseOpcode.FUSE_STATFS, r => FakeFuseReply.Raw(16, -512, r.Unique, []), "error -512");
        yield return Case("error reply with payload", FuseOpcode.FUSE_GETATTR, r => FakeFuseReply.Raw(24, -2, r.Unique, new byte[8]), "carries 8 bytes of payload");
        yield return Case("STATFS payload of the wrong size", FuseOpcode.FUSE_STATFS, r => FakeFuseReply.Ok(r.Unique, new byte[48]), "48 bytes of payload where 80 are due");
        yield return Case("attribute with no file type", FuseOpcode.FUSE_GETATTR, r => FakeFuseReply.Ok(r.Unique, new FuseAttrOut { Attr = RegularAttr() with { Mode = 0x1A4 } }), "has no valid file type");
        yield return Case("attribute with an impossible size", FuseOpcode.FUSE_GETATTR, r => FakeFuseReply.Ok(r.Unique, new FuseAttrOut { Attr = RegularAttr() with { FileSize = ulong.MaxValue } }), "is beyond any file");
    }

    [TestCaseSource(nameof(MalformedReplies))]
    public void Malformed_reply_must_end_the_session(FuseOpcode opcode, Func<FuseRequestSeen, FakeFuseReply> reply, string message)
    {
        Start();
        _session.Initialize();
        Intercept(opcode, reply);
        var e = Assert.Throws<FuseProtocolException>(() => Call(opcode));
        Assert.That(e!.Message, Does.Contain(message));
        Assert.That(_session.LostReason, Does.Contain(message));
        Assert.That(() => _session.StatFs(), Throws.TypeOf<FuseSessionLostException>(), "nothing is sent after a violation");
    }

    [Test]
    public void Write_reply_claiming_more_than_was_sent_must_end_the_session()
    {
        Start();
        _session.Initialize();
        (_, FuseHandle handle) = _session.Create(Fuse.RootId, "f"u8, Fuse.O_RDWR, 0x1A4);
        Intercept(FuseOpcode.FUSE_WRITE, r => FakeFuseReply.Ok(r.Unique, new FuseWriteOut { WriteSize = 100 }));
        Assert.That(() => _session.Write(handle, 0, new byte[10]), Throws.TypeOf<FuseProtocolException>().With.Message.Contains("fuse_write_out.size 100"));
    }

    [Test]
    public void Read_reply_longer_than_asked_must_end_the_session()
    {
        Start();
        _session.Initialize();
        Fs.AddFile("f", Pattern(100));
        FuseEntry file = _session.Lookup(Fuse.RootId, "f"u8)!.Value;
        FuseHandle handle = _session.Open(file.NodeId, Fuse.O_RDONLY);
        Intercept(FuseOpcode.FUSE_READ, r => FakeFuseReply.Ok(r.Unique, new byte[200]) with { ReportedWritten = 16 + 200 });
        Assert.That(() => _session.Read(handle, 0, new byte[50]), Throws.TypeOf<FuseProtocolException>().With.Message.Contains("216 bytes written into 66 bytes"));
    }

    [TestCase("a/b", "a name with '/'")]
    [TestCase("", "a name of 0 bytes")]
    public void Directory_record_with_a_bad_name_must_end_the_session(string name, string _)
    {
        Start();
        _session.Initialize();
        FuseHandle root = _session.OpenDir(Fuse.RootId);
        Intercept(FuseOpcode.FUSE_READDIRPLUS, r => FakeFuseReply.Ok(r.Unique, Record(name, new FuseEntryOut { NodeId = 7, Attr = RegularAttr() })));
        Assert.That(() => _session.ReadDirPlus(root, 0), Throws.TypeOf<FuseProtocolException>());
        Assert.That(Fs.Errors, Is.Empty);
    }

    [Test]
    public void Directory_record_running_past_the_reply_must_end_the_session_without_holding_its_lookups()
    {
        Start();
        _session.Initialize();
        FuseHandle root = _session.OpenDir(Fuse.RootId);
        byte[] good = Record("ok", new FuseEntryOut { NodeId = 7, Attr = RegularAttr() });
        byte[] cut = Record("cut", new FuseEntryOut { NodeId = 8, Attr = RegularAttr() })[..100];
        Intercept(FuseOpcode.FUSE_READDIRPLUS, r => FakeFuseReply.Ok(r.Unique, [.. good, .. cut]));
        Assert.That(() => _session.ReadDirPlus(root, 0), Throws.TypeOf<FuseProtocolException>().With.Message.Contains("left over"));
        Assert.That(_session.NodesHeld, Is.Zero, "a rejected listing hands out no nodes");
    }

    [Test]
    public void Create_returning_the_root_or_a_directory_must_end_the_session()
    {
        Start();
        _session.Initialize();
        Intercept(FuseOpcode.FUSE_CREATE, r => FakeFuseReply.Ok(r.Unique, [.. Bytes(new FuseEntryOut { NodeId = Fuse.RootId, Attr = RegularAttr() }), .. new byte[16]]));
        Assert.That(() => _session.Create(Fuse.RootId, "f"u8, Fuse.O_RDWR, 0x1A4), Throws.TypeOf<FuseProtocolException>().With.Message.Contains("node id 1 for a new node"));

        Start();
        _session.Initialize();
        Intercept(FuseOpcode.FUSE_CREATE, r => FakeFuseReply.Ok(r.Unique, [.. Bytes(new FuseEntryOut { NodeId = 9, Attr = RegularAttr() with { Mode = Fuse.S_IFDIR | 0x1ED } }), .. new byte[16]]));
        Assert.That(() => _session.Create(Fuse.RootId, "f"u8, Fuse.O_RDWR, 0x1A4), Throws.TypeOf<FuseProtocolException>().With.Message.Contains("not of the type created"));
    }

    [Test]
    public void A_device_that_does_not_answer_must_lose_the_session_after_the_request_timeout()
    {
        Start(timeout: TimeSpan.FromMilliseconds(300));
        _session.Initialize();
        Intercept(FuseOpcode.FUSE_STATFS, _ => FakeFuseReply.Never);
        Assert.That(() => _session.StatFs(), Throws.TypeOf<FuseSessionLostException>().With.Message.Contains("did not answer FUSE_STATFS"));
    }

    [Test]
    public async Task Abort_must_end_a_wait_in_progress_with_the_reason()
    {
        Start();
        _session.Initialize();
        Intercept(FuseOpcode.FUSE_STATFS, _ => FakeFuseReply.Never);
        Task<Exception?> waiting = Task.Run(() => Catch(() => _session.StatFs()));
        while (!_device.Seen.Any(r => r.Opcode == FuseOpcode.FUSE_STATFS))
        {
            await Task.Delay(10);
        }

        _session.Abort("the back-end went away");
        Exception? e = await waiting.WaitAsync(Timeout);
        Assert.That(e, Is.TypeOf<FuseSessionLostException>().With.Message.EqualTo("the back-end went away"));
    }

    [Test]
    public void Names_that_are_not_file_names_must_be_refused_before_anything_is_sent()
    {
        Start();
        _session.Initialize();
        int before = _device.Seen.Count;
        Assert.That(() => _session.Lookup(Fuse.RootId, "a/b"u8), Throws.ArgumentException);
        Assert.That(() => _session.Mkdir(Fuse.RootId, ".."u8, 0x1ED), Throws.ArgumentException);
        Assert.That(() => _session.Create(Fuse.RootId, new byte[Fuse.NameMax + 1], 0, 0), Throws.ArgumentException);
        Assert.That(_device.Seen, Has.Count.EqualTo(before));
    }

    [Test]
    public void Pipelined_reads_must_complete_in_any_order_they_are_asked_for()
    {
        Start();
        FuseInitResult init = _session.Initialize();
        byte[] content = Pattern(init.MaxRead * 3);
        Fs.AddFile("f", content);
        FuseEntry file = _session.Lookup(Fuse.RootId, "f"u8)!.Value;
        FuseHandle handle = _session.Open(file.NodeId, Fuse.O_RDONLY);
        var reads = Enumerable.Range(0, 3).Select(i => _session.SubmitRead(handle, (ulong)(i * init.MaxRead), init.MaxRead)).ToArray();
        foreach (int i in new[] { 2, 0, 1 })
        {
            Assert.That(_session.CompleteRead(reads[i]).ToArray(), Is.EqualTo(content.AsSpan(i * init.MaxRead, init.MaxRead).ToArray()));
        }
    }

    private void Start(bool packed = false, TimeSpan? timeout = null)
    {
        _device?.ReleaseHeld();
        _session?.Dispose();
        _guest?.Dispose();
        _device?.Dispose();
        _device = new FakeFsDevice();
        _guest = new DeviceGuest(_device, new VirtioDriverOptions { PackedRing = packed, QueueSize = 64 });
        var queues = new VirtioFsSession.VirtqueuePair(_guest.Driver.Queues[0], _guest.Driver.Queues[1]);
        _session = new VirtioFsSession(queues, _guest.Memory, _guest.Allocator, new VirtioFsSessionOptions { RequestTimeout = timeout ?? Timeout, MaxIoSize = 256 * 1024 });
    }

    private void Intercept(FuseOpcode opcode, Func<FuseRequestSeen, FakeFuseReply> reply) =>
        _device.Intercept = r => r.Opcode == opcode ? reply(r) : null;

    private void Call(FuseOpcode opcode)
    {
        switch (opcode)
        {
            case FuseOpcode.FUSE_GETATTR:
                _session.GetAttr(Fuse.RootId);
                break;
            case FuseOpcode.FUSE_STATFS:
                _session.StatFs();
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(opcode));
        }
    }

    private static Exception? Catch(Action action)
    {
        try
        {
            action();
            return null;
        }
        catch (Exception e)
        {
            return e;
        }
    }

    private static FuseAttr RegularAttr() => new() { Ino = 7, Mode = Fuse.S_IFREG | 0x1A4, FileSize = 10, Nlink = 1 };

    private static byte[] Record(string name, FuseEntryOut entry)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(name);
        int length = Fuse.DirentAlign(FuseDirentPlus.Size + bytes.Length);
        byte[] record = new byte[length];
        var plus = new FuseDirentPlus { EntryOut = entry, Dirent = new FuseDirent { Ino = entry.NodeId, Off = 1, NameLen = (uint)bytes.Length, Type = 8 } };
        MemoryMarshal.Write(record, in plus);
        bytes.CopyTo(record.AsSpan(FuseDirentPlus.Size));
        return record;
    }

    private static byte[] Bytes<T>(T value)
        where T : unmanaged => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(ref value)).ToArray();

    private static byte[] Pattern(int length)
    {
        byte[] bytes = new byte[length];
        new Random(length).NextBytes(bytes);
        return bytes;
    }
}

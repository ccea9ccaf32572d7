using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Host.Tests.Run;
using Vmm.Host.Tests.VhostUser;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

// The hostile cases are processes that mostly wait (deadlines, reconnects): several at once.
[assembly: LevelOfParallelism(6)]

namespace Vmm.Host.Tests.Hostile;

/// <summary>What a case must end in.</summary>
public enum HostileOutcome
{
    /// <summary>Exit 0 with the image's true checksum: the VMM got past the misbehaviour.</summary>
    Recovers,

    /// <summary>Exit 1 or 2 with one clear sentence: the misbehaviour cannot be lived with.</summary>
    Fails,

    /// <summary>Either of the two; what is never allowed is a wrong answer, a crash or a hang.</summary>
    Either,
}

/// <summary>
/// The adversarial back-end suite: <c>vmm run --vhost-user SOCK,type=blk --workload checksum</c>
/// (the real program, a process) against a back-end that behaves up to a point and then
/// misbehaves once (<see cref="HostileBackend"/>). Every case must end in a clear
/// one-sentence error (exit 1 or 2, no stack trace) or a recovery with the right checksum,
/// and the process must end on its own (<see cref="VmmProcess"/> fails a run still going
/// after 3 minutes). Each case also asserts its misbehaviour actually happened.
/// </summary>
[TestFixture]
[Parallelizable(ParallelScope.Children)]
public sealed class HostileBackendTests
{
    private const int ImageSize = (3 << 20) + 512;
    private const string Twisted = "twist: ";

    private static readonly Regex StackFrame = new(@"^\s+at \S", RegexOptions.Multiline);

    public static IEnumerable<TestCaseData> Cases()
    {
        // --- The handshake: the first connection never becomes ready. ---
        yield return Case("silence at GET_FEATURES", HostileOutcome.Fails,
            OnRequest(VhostUserRequest.GET_FEATURES, (l, m) => Drop(l, "GET_FEATURES left unanswered")));
        yield return Case("close at GET_FEATURES", HostileOutcome.Fails,
            OnRequest(VhostUserRequest.GET_FEATURES, (l, m) => { Twist(l, "closed"); l.Close(); return Handled; }));
        yield return Case("reply with another request's code", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_FEATURES, (l, m) => Send(l, "GET_FEATURES answered as GET_PROTOCOL_FEATURES",
                new VhostUserHeader((uint)VhostUserRequest.GET_PROTOCOL_FEATURES, m.Header.Flags, m.Header.PayloadSize), m.Payload.ToArray())));
        yield return Case("reply without the reply flag", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_FEATURES, (l, m) => Send(l, "reply flag cleared",
                new VhostUserHeader(m.Header.Request, VhostUserHeaderFlags.Version, m.Header.PayloadSize), m.Payload.ToArray())));
        yield return Case("reply of the wrong size", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_FEATURES, (l, m) => Send(l, "4-byte GET_FEATURES reply",
                new VhostUserHeader(m.Header.Request, m.Header.Flags, 4), m.Payload[..4].ToArray())));
        yield return Case("reply announcing 4 GiB of payload", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_FEATURES, (l, m) => Raw(l, "header with size 0xffffffff", Header(m.Header.Request, m.Header.Flags, uint.MaxValue))));
        yield return Case("half a reply, then close", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_PROTOCOL_FEATURES, (l, m) =>
            {
                Twist(l, "6 bytes of a reply, then close");
                l.SendRaw(Header(m.Header.Request, m.Header.Flags, 8).AsSpan(0, 6));
                l.Close();
                return Handled;
            }));
        yield return Case("features without VERSION_1", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_FEATURES, (l, m) => ReplaceU64(l, m, v => v & ~(1UL << 32))));
        yield return Case("every feature bit offered", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_FEATURES, (l, m) => ReplaceU64(l, m, _ => ulong.MaxValue)));
        yield return Case("every protocol feature bit offered", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_PROTOCOL_FEATURES, (l, m) => ReplaceU64(l, m, _ => ulong.MaxValue)));
        yield return Case("GET_QUEUE_NUM of 0", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_QUEUE_NUM, (l, m) => ReplaceU64(l, m, _ => 0)));
        yield return Case("GET_QUEUE_NUM of 2^32", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_QUEUE_NUM, (l, m) => ReplaceU64(l, m, _ => 1UL << 32)));
        yield return Case("GET_MAX_MEM_SLOTS of 0", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_MAX_MEM_SLOTS, (l, m) => ReplaceU64(l, m, _ => 0)));
        yield return Case("GET_MAX_MEM_SLOTS of 2^64-1", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_MAX_MEM_SLOTS, (l, m) => ReplaceU64(l, m, _ => ulong.MaxValue)));

        // --- Config values that cannot be true. ---
        yield return Case("capacity of 2^63 sectors", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_CONFIG, (l, m) => ReplaceConfig(l, m, 0, 1UL << 63)));
        yield return Case("capacity of 2^64-1 sectors", HostileOutcome.Fails,
            OnReply(VhostUserRequest.GET_CONFIG, (l, m) => ReplaceConfig(l, m, 0, ulong.MaxValue)));
        yield return Case("GET_CONFIG reply shorter than asked", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_CONFIG, (l, m) => Send(l, "config reply of 8 data bytes",
                new VhostUserHeader(m.Header.Request, m.Header.Flags, VhostUserConfig.HeaderSize + 8), m.Payload[..(VhostUserConfig.HeaderSize + 8)].ToArray())));
        yield return Case("GET_CONFIG reply whose size field disagrees", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_CONFIG, (l, m) =>
            {
                byte[] payload = m.Payload.ToArray();
                BinaryPrimitives.WriteUInt32LittleEndian(payload.AsSpan(4), 256);
                return Send(l, "config size field 256", m.Header, payload);
            }));

        // --- Acks. ---
        yield return Case("NACK of SET_VRING_ADDR", HostileOutcome.Fails,
            OnReply(VhostUserRequest.SET_VRING_ADDR, (l, m) => ReplaceU64(l, m, _ => 1)));
        yield return Case("NACK of ADD_MEM_REG", HostileOutcome.Fails,
            OnReply(VhostUserRequest.ADD_MEM_REG, (l, m) => ReplaceU64(l, m, _ => 1)));
        yield return Case("ack with another request's code", HostileOutcome.Fails,
            OnReply(VhostUserRequest.SET_VRING_NUM, (l, m) => Send(l, "SET_VRING_NUM acked as SET_FEATURES",
                new VhostUserHeader((uint)VhostUserRequest.SET_FEATURES, m.Header.Flags, m.Header.PayloadSize), m.Payload.ToArray())));
        yield return Case("ack of 4 bytes", HostileOutcome.Fails,
            OnReply(VhostUserRequest.SET_VRING_BASE, (l, m) => Send(l, "4-byte ack",
                new VhostUserHeader(m.Header.Request, m.Header.Flags, 4), m.Payload[..4].ToArray())));

        // --- Inflight region. ---
        yield return Case("GET_INFLIGHT_FD refused without an fd", HostileOutcome.Recovers,
            OnRequest(VhostUserRequest.GET_INFLIGHT_FD, (l, m) => Send(l, "refused: mmap_size 0, no fd",
                VhostUserCodec.ReplyHeader(VhostUserRequest.GET_INFLIGHT_FD, VhostUserInflight.Size), new byte[VhostUserInflight.Size])));
        yield return Case("GET_INFLIGHT_FD reply with a size and no fd", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_INFLIGHT_FD, (l, m) => Send(l, "the fd left out", m.Header, m.Payload.ToArray())));
        yield return Case("GET_INFLIGHT_FD reply with two fds", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_INFLIGHT_FD, (l, m) => Send(l, "a second fd", m.Header, m.Payload.ToArray(), [m.Fds[0], m.Fds[0]])));
        yield return Case("GET_INFLIGHT_FD reply larger than its file", HostileOutcome.Either,
            OnReply(VhostUserRequest.GET_INFLIGHT_FD, (l, m) =>
            {
                VhostUserInflight inflight = VhostUserInflight.Read(m.Payload.Span);
                var bigger = new VhostUserInflight(1UL << 40, inflight.MmapOffset, inflight.NumQueues, inflight.QueueSize);
                byte[] payload = new byte[m.Payload.Length];
                bigger.Write(payload);
                return Send(l, "mmap_size 1 TiB", m.Header, payload, [m.Fds[0]]);
            }));

        // --- Memory and notifiers the front-end handed over. ---
        yield return Case("guest memory truncated", HostileOutcome.Recovers,
            AfterEnable((l, _) => ResizeGuestMemory(l, 0)));
        yield return Case("guest memory grown", HostileOutcome.Recovers,
            AfterEnable((l, _) => ResizeGuestMemory(l, 1L << 40)));
        yield return Case("kick eventfd saturated", HostileOutcome.Recovers, () => new SaturatedKickScript());
        yield return Case("interrupt storm", HostileOutcome.Recovers,
            OnRequest(VhostUserRequest.SET_VRING_CALL, (l, m) =>
            {
                if (m.Fds.Count == 1)
                {
                    Twist(l, "call eventfd signalled in a loop");
                    Vmm.Core.Posix.SafeFileDescriptor call = m.Fds[0];
                    l.Background(async ct =>
                    {
                        while (!ct.IsCancellationRequested)
                        {
                            for (int i = 0; i < 200; i++)
                            {
                                RawEventFd.TryAdd(call, 1);
                            }

                            await Task.Delay(1, ct).ConfigureAwait(false);
                        }
                    });
                }

                return NotHandled;
            }));

        // --- The back-end request channel. ---
        yield return Case("CONFIG_CHANGE_MSG flood", HostileOutcome.Recovers,
            OnBackendChannel((l, channel, ct) => FloodAsync(l, channel, ct)));
        yield return Case("malformed back-end request", HostileOutcome.Either,
            OnBackendChannel(async (l, channel, ct) =>
            {
                Twist(l, "unknown back-end request 999 with NEED_REPLY");
                await channel.SendAsync(new VhostUserHeader(999, VhostUserHeaderFlags.Version | VhostUserHeaderFlags.NeedReply, 8), new byte[8], null, ct).ConfigureAwait(false);
            }));
        yield return Case("garbage on the back-end channel", HostileOutcome.Either,
            OnBackendChannel(async (l, channel, ct) =>
            {
                Twist(l, "a header with reserved flags and a huge size");
                await channel.SendAsync(new VhostUserHeader((uint)VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0xff, 0), ReadOnlyMemory<byte>.Empty, null, ct).ConfigureAwait(false);
            }));

        // --- Deadlines. ---
        yield return Case("replies 1.5 s late, within the deadline", HostileOutcome.Recovers,
            OnReply(null, async (l, m) =>
            {
                if ((VhostUserRequest)m.Header.Request is VhostUserRequest.GET_FEATURES or VhostUserRequest.SET_VRING_ADDR)
                {
                    Twist(l, $"{(VhostUserRequest)m.Header.Request} answered 1.5 s late");
                    await Task.Delay(1500, l.Ended).ConfigureAwait(false);
                }

                return false;
            }));
        yield return Case("a reply beyond the deadline, once", HostileOutcome.Recovers,
            OnReply(VhostUserRequest.SET_VRING_ADDR, async (l, m) =>
            {
                if (l.Number == 1)
                {
                    Twist(l, "SET_VRING_ADDR answered 8 s late");
                    await Task.Delay(8000, l.Ended).ConfigureAwait(false);
                }

                return false;
            }));

        // --- Stray bytes on the main channel. ---
        yield return Case("unsolicited reply while idle, once", HostileOutcome.Recovers,
            AfterEnable(async (l, ct) =>
            {
                if (l.Number == 1)
                {
                    await StrayReplyAsync(l, ct).ConfigureAwait(false);
                }
            }));
        yield return Case("unsolicited reply while idle, every connection", HostileOutcome.Either,
            AfterEnable(StrayReplyAsync));

        // --- Teardown: GET_VRING_BASE. ---
        yield return Case("GET_VRING_BASE answered with garbage", HostileOutcome.Either,
            StoppingRings(onReply: (l, m) => Send(l, "a 4-byte GET_VRING_BASE reply",
                new VhostUserHeader(m.Header.Request, m.Header.Flags, 4), new byte[4])));
        yield return Case("GET_VRING_BASE for another ring", HostileOutcome.Either,
            StoppingRings(onReply: (l, m) =>
            {
                byte[] payload = m.Payload.ToArray();
                BinaryPrimitives.WriteUInt32LittleEndian(payload, 77);
                return Send(l, "ring 77 in the reply", m.Header, payload);
            }));
        yield return Case("GET_VRING_BASE never answered", HostileOutcome.Either,
            StoppingRings(onRequest: (l, m) => Drop(l, "GET_VRING_BASE left unanswered")));
        yield return Case("GET_VRING_BASE answered twice", HostileOutcome.Either,
            StoppingRings(onReply: async (l, m) =>
            {
                Twist(l, "GET_VRING_BASE reply sent twice");
                await l.Frontend.SendAsync(m.Header, m.Payload, null).ConfigureAwait(false);
                return false;
            }));

        // --- The used ring. ---
        yield return Case("used index jumps past the ring", HostileOutcome.Fails, () => new UsedRingScript(jump: true));
        yield return Case("used id out of range", HostileOutcome.Fails, () => new UsedRingScript(jump: false));

        // --- A back-end that dies. ---
        yield return Case("dies once after its rings started", HostileOutcome.Recovers,
            AfterEnable((l, _) =>
            {
                if (l.Number == 1)
                {
                    Twist(l, "closed after SET_VRING_ENABLE");
                    l.Close();
                }

                return Task.CompletedTask;
            }));
        yield return Case("dies on every connection after its rings started", HostileOutcome.Either,
            AfterEnable((l, _) =>
            {
                Twist(l, "closed after SET_VRING_ENABLE");
                l.Close();
                return Task.CompletedTask;
            }));
        yield return Case("dies with reconnect=off", HostileOutcome.Either,
            AfterEnable((l, _) =>
            {
                Twist(l, "closed after SET_VRING_ENABLE");
                l.Close();
                return Task.CompletedTask;
            }), "reconnect=off");
        yield return Case("dies once, then refuses every handshake", HostileOutcome.Fails, DiesThenRefuses);
        yield return Case("dies once with reconnect=off, then refuses every handshake", HostileOutcome.Fails, DiesThenRefuses, "reconnect=off");
    }

    /// <summary>
    /// The first connection withholds ring 0's SET_VRING_ENABLE from the real back-end (acking it
    /// itself), so the workload's first requests wait, and closes 300 ms later; every later
    /// connection is closed at its first request. The device must give up, and the waiting
    /// requests end at once rather than at the workload's request timeout.
    /// </summary>
    private static HostileScript DiesThenRefuses() => new DelegateScript(
        onRequest: async (l, m) =>
        {
            if (l.Number > 1)
            {
                Twist(l, "closed at the first request");
                l.Close();
                return true;
            }

            if ((VhostUserRequest)m.Header.Request == VhostUserRequest.SET_VRING_ENABLE && VhostUserVringState.Read(m.Payload.Span) is { Index: 0, Num: 1 })
            {
                if (VhostUserCodec.NeedsReply(m.Header))
                {
                    await l.AckAsync(m).ConfigureAwait(false);
                }

                l.Background(async ct =>
                {
                    await Task.Delay(300, ct).ConfigureAwait(false);
                    Twist(l, "ring 0 never served, then closed");
                    l.Close();
                });
                return true;
            }

            return false;
        });

    [TestCaseSource(nameof(Cases))]
    public void Vmm_run_ends_cleanly(HostileOutcome expected, Func<HostileScript> script, string extraOptions)
    {
        using var dir = new WorkDir();
        using var image = new TempImage(ImageSize, seed: 91);
        string want = $"sha256 {Convert.ToHexStringLower(SHA256.HashData(image.Read()))}\n";
        VmmProcess.Result r;
        string notes;
        using (var backend = new HostileBackend(dir["blk.sock"], image.Path, script))
        {
            r = VmmProcess.Run("run", "--vhost-user", $"{backend.SocketPath},type=blk,reconnect-max=2{extraOptions}", "--workload", "checksum", "--memory", "64M");
            notes = backend.Notes;
        }

        string context = $"exit {r.ExitCode}\nstdout: {r.Stdout}\nstderr:\n{r.Stderr}\nback-end:\n{notes}";
        Assert.Multiple(() =>
        {
            Assert.That(notes, Does.Contain(Twisted), "the misbehaviour never happened:\n" + context);
            Assert.That(StackFrame.IsMatch(r.Stderr), Is.False, "a stack trace on stderr:\n" + context);
            Assert.That(r.Stderr, Does.Not.Contain("Unhandled exception"), context);
            switch (expected)
            {
                case HostileOutcome.Recovers:
                    Assert.That(r.ExitCode, Is.Zero, context);
                    Assert.That(r.Stdout, Is.EqualTo(want), context);
                    break;
                case HostileOutcome.Fails:
                    Assert.That(r.ExitCode, Is.AnyOf(1, 2), context);
                    break;
                default:
                    Assert.That(r.ExitCode, Is.AnyOf(0, 1, 2), context);
                    break;
            }

            if (r.ExitCode == 0)
            {
                Assert.That(r.Stdout, Is.EqualTo(want), "a success with a wrong answer:\n" + context);
            }
            else
            {
                Assert.That(r.Stdout, Is.Empty, "a failure printed a result:\n" + context);
                Assert.That(r.StderrLines.LastOrDefault(), Does.StartWith("vmm: "), "no closing sentence:\n" + context);
                Assert.That(r.StderrLines.Last(), Does.Not.Contain("within 30 s"), "the workload waited out its request timeout:\n" + context);
            }
        });
    }

    #region Script builders

    private static readonly ValueTask<bool> Handled = ValueTask.FromResult(true);
    private static readonly ValueTask<bool> NotHandled = ValueTask.FromResult(false);

    private static TestCaseData Case(string name, HostileOutcome outcome, Func<HostileScript> script, string? extraOption = null) =>
        new TestCaseData(outcome, script, extraOption is null ? string.Empty : "," + extraOption).SetArgDisplayNames(name);

    private static Func<HostileScript> OnRequest(VhostUserRequest code, Func<HostileLink, VhostUserMessage, ValueTask<bool>> act) =>
        () => new DelegateScript(onRequest: (l, m) => (VhostUserRequest)m.Header.Request == code ? act(l, m) : NotHandled);

    private static Func<HostileScript> OnReply(VhostUserRequest? code, Func<HostileLink, VhostUserMessage, ValueTask<bool>> act) =>
        () => new DelegateScript(onReply: (l, m) => code is null || (VhostUserRequest)m.Header.Request == code ? act(l, m) : NotHandled);

    /// <summary>
    /// Hides RESET_DEVICE and STATUS from the front-end, so that the guest's reset stops each ring
    /// with GET_VRING_BASE, and twists that request or its reply.
    /// </summary>
    private static Func<HostileScript> StoppingRings(
        Func<HostileLink, VhostUserMessage, ValueTask<bool>>? onRequest = null,
        Func<HostileLink, VhostUserMessage, ValueTask<bool>>? onReply = null) =>
        () => new DelegateScript(
            onRequest: (l, m) => onRequest is not null && (VhostUserRequest)m.Header.Request == VhostUserRequest.GET_VRING_BASE ? onRequest(l, m) : NotHandled,
            onReply: (l, m) => (VhostUserRequest)m.Header.Request switch
            {
                VhostUserRequest.GET_PROTOCOL_FEATURES => Forward(l, m.Header,
                    BitConverter.GetBytes(BinaryPrimitives.ReadUInt64LittleEndian(m.Payload.Span) & ~(ulong)(VhostUserProtocolFeatures.RESET_DEVICE | VhostUserProtocolFeatures.STATUS))),
                VhostUserRequest.GET_VRING_BASE when onReply is not null => onReply(l, m),
                _ => NotHandled,
            });

    /// <summary>Runs <paramref name="act"/> in the background once ring 0 was enabled on a connection.</summary>
    private static Func<HostileScript> AfterEnable(Func<HostileLink, CancellationToken, Task> act) =>
        () => new DelegateScript(onReply: (l, m) =>
        {
            if ((VhostUserRequest)m.Header.Request == VhostUserRequest.SET_VRING_ENABLE && !l.Notes.Contains("enabled"))
            {
                l.Note("enabled");
                l.Background(async ct =>
                {
                    await Task.Delay(50, ct).ConfigureAwait(false);
                    await act(l, ct).ConfigureAwait(false);
                });
            }

            return NotHandled;
        });

    /// <summary>Takes the back-end channel (SET_BACKEND_REQ_FD is acked here, the real back-end never gets it) and runs <paramref name="act"/> on it.</summary>
    private static Func<HostileScript> OnBackendChannel(Func<HostileLink, VhostUserChannel, CancellationToken, Task> act) =>
        OnRequest(VhostUserRequest.SET_BACKEND_REQ_FD, async (l, m) =>
        {
            using Vmm.Core.Posix.SafeFileDescriptor fd = m.TakeFd(0);
            var socket = new System.Net.Sockets.Socket(new System.Net.Sockets.SafeSocketHandle(fd.DangerousGetHandle(), ownsHandle: true));
            fd.SetHandleAsInvalid();
            VhostUserChannel channel = VhostUserChannel.FromSocket(socket);
            if (VhostUserCodec.NeedsReply(m.Header))
            {
                await l.AckAsync(m).ConfigureAwait(false);
            }

            l.Background(async ct =>
            {
                using (channel)
                {
                    await Task.Delay(100, ct).ConfigureAwait(false);
                    await act(l, channel, ct).ConfigureAwait(false);
                    await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false);
                }
            });
            return true;
        });

    private static async Task FloodAsync(HostileLink link, VhostUserChannel channel, CancellationToken ct)
    {
        Twist(link, "10000 CONFIG_CHANGE_MSG");
        for (int i = 0; i < 10_000; i++)
        {
            await channel.SendAsync(VhostUserCodec.BackendRequestHeader(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0), ReadOnlyMemory<byte>.Empty, null, ct).ConfigureAwait(false);
        }
    }

    private static async Task StrayReplyAsync(HostileLink link, CancellationToken ct)
    {
        Twist(link, "an unsolicited GET_VRING_BASE reply while no request was outstanding");
        byte[] payload = new byte[VhostUserVringState.Size];
        await link.Frontend.SendAsync(VhostUserCodec.ReplyHeader(VhostUserRequest.GET_VRING_BASE, payload.Length), payload, null, ct).ConfigureAwait(false);
    }

    private static Task ResizeGuestMemory(HostileLink link, long length)
    {
        foreach ((VhostUserMemoryRegion _, Vmm.Core.Posix.SafeFileDescriptor fd) in link.Regions)
        {
            try
            {
                using var file = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(fd.DangerousGetHandle(), ownsHandle: false), FileAccess.ReadWrite, 0);
                file.SetLength(length);
                Twist(link, $"guest memory resized to {length}");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Twist(link, $"guest memory resize to {length} refused: {e.Message}");
            }
        }

        return Task.CompletedTask;
    }

    private static ValueTask<bool> Drop(HostileLink link, string what)
    {
        Twist(link, what);
        return Handled;
    }

    private static void Twist(HostileLink link, string what) => link.Note(Twisted + what);

    private static async ValueTask<bool> Send(HostileLink link, string what, VhostUserHeader header, byte[] payload, IReadOnlyList<System.Runtime.InteropServices.SafeHandle>? fds = null)
    {
        Twist(link, what);
        await link.Frontend.SendAsync(header, payload, fds).ConfigureAwait(false);
        return true;
    }

    private static async ValueTask<bool> Forward(HostileLink link, VhostUserHeader header, byte[] payload)
    {
        await link.Frontend.SendAsync(header, payload).ConfigureAwait(false);
        return true;
    }

    private static ValueTask<bool> Raw(HostileLink link, string what, byte[] bytes)
    {
        Twist(link, what);
        link.SendRaw(bytes);
        return Handled;
    }

    private static ValueTask<bool> ReplaceU64(HostileLink link, VhostUserMessage reply, Func<ulong, ulong> change)
    {
        ulong value = reply.Payload.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(reply.Payload.Span) : 0;
        ulong changed = change(value);
        return Send(link, $"{(VhostUserRequest)reply.Header.Request} answered 0x{changed:x} (was 0x{value:x})", reply.Header, BitConverter.GetBytes(changed), reply.Fds);
    }

    private static ValueTask<bool> ReplaceConfig(HostileLink link, VhostUserMessage reply, int configOffset, ulong value)
    {
        byte[] payload = reply.Payload.ToArray();
        VhostUserConfig header = VhostUserConfig.Read(payload);
        int at = VhostUserConfig.HeaderSize + configOffset - (int)header.Offset;
        if (at < VhostUserConfig.HeaderSize || at + 8 > payload.Length)
        {
            return NotHandled;
        }

        BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(at), value);
        return Send(link, $"config bytes {configOffset}..{configOffset + 7} = 0x{value:x}", reply.Header, payload);
    }

    private static byte[] Header(uint request, uint flags, uint size)
    {
        byte[] bytes = new byte[VhostUserHeader.Size];
        new VhostUserHeader(request, flags, size).Write(bytes);
        return bytes;
    }

    #endregion

    /// <summary>
    /// Saturates the front-end's kick eventfd for ring 0 (0xfffffffffffffffe, never read) and
    /// gives the real back-end an eventfd of its own, signalled every few milliseconds, so it
    /// still serves the ring.
    /// </summary>
    private sealed class SaturatedKickScript : HostileScript
    {
        public override async ValueTask<bool> OnRequestAsync(HostileLink link, VhostUserMessage request)
        {
            if ((VhostUserRequest)request.Header.Request != VhostUserRequest.SET_VRING_KICK || request.Fds.Count != 1)
            {
                return false;
            }

            Vmm.Core.Posix.SafeFileDescriptor kick = request.Fds[0];
            while (!RawEventFd.TryAdd(kick, 0xffff_ffff_ffff_fffe))
            {
                RawEventFd.TryDrain(kick);
            }

            Twist(link, "kick eventfd saturated and never read");
            var own = new EventFd();
            await link.Proxy.SendAsync(request.Header, request.Payload, [own.Handle]).ConfigureAwait(false);
            link.Background(async ct =>
            {
                using (own)
                {
                    while (!ct.IsCancellationRequested)
                    {
                        own.Signal();
                        await Task.Delay(5, ct).ConfigureAwait(false);
                    }
                }
            });
            return true;
        }
    }

    /// <summary>
    /// Corrupts ring 0's used ring in guest memory before the real back-end ever serves it (its
    /// SET_VRING_ENABLE is withheld and acked here), and signals the ring's call eventfd so the
    /// guest driver looks: either the used index jumps past the ring, or the one used element
    /// names a descriptor that does not exist.
    /// </summary>
    private sealed class UsedRingScript(bool jump) : HostileScript
    {
        private Vmm.Core.Posix.SafeFileDescriptor? _call;

        public override async ValueTask<bool> OnRequestAsync(HostileLink link, VhostUserMessage request)
        {
            switch ((VhostUserRequest)request.Header.Request)
            {
                case VhostUserRequest.SET_VRING_CALL when request.Fds.Count == 1 && VhostUserVringState.Read(request.Payload.Span).Index == 0:
                    _call = request.Fds[0];
                    return false;
                case VhostUserRequest.SET_VRING_ENABLE when VhostUserVringState.Read(request.Payload.Span) is { Index: 0, Num: 1 }:
                    if (VhostUserCodec.NeedsReply(request.Header))
                    {
                        await link.AckAsync(request).ConfigureAwait(false);
                    }

                    Corrupt(link);
                    Vmm.Core.Posix.SafeFileDescriptor? call = _call;
                    link.Background(async ct =>
                    {
                        while (!ct.IsCancellationRequested)
                        {
                            if (call is not null)
                            {
                                RawEventFd.TryAdd(call, 1);
                            }

                            await Task.Delay(20, ct).ConfigureAwait(false);
                        }
                    });
                    return true;
                default:
                    return false;
            }
        }

        private void Corrupt(HostileLink link)
        {
            uint size = link.RingSizes[0];
            (Microsoft.Win32.SafeHandles.SafeFileHandle file, long offset) = link.Translate(link.RingAddresses[0].Used);
            if (jump)
            {
                RandomAccess.Write(file, BitConverter.GetBytes((ushort)(size + 5)), offset + 2);
                Twist(link, $"used index set to {size + 5} on a ring of {size}");
            }
            else
            {
                byte[] element = new byte[8];
                BinaryPrimitives.WriteUInt32LittleEndian(element, 0xfff0);
                RandomAccess.Write(file, element, offset + 4);
                RandomAccess.Write(file, BitConverter.GetBytes((ushort)1), offset + 2);
                Twist(link, "used element 0 names descriptor 0xfff0");
            }
        }
    }
}

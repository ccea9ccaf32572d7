using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

/// <summary>
/// Every malformed header a back-end (or a front-end, on the back-end channel) can receive.
/// The validators take only the 12-byte header, so each verdict is reached before any payload
/// is read or allocated.
/// </summary>
[TestFixture]
public class HeaderValidationTests
{
    private static VhostUserHeader Request(VhostUserRequest request, uint size, uint flags = VhostUserHeaderFlags.Version) =>
        new((uint)request, flags, size);

    private static void AssertRejected(VhostUserHeader header, string messagePart)
    {
        Assert.That(
            () => VhostUserCodec.ValidateRequestHeader(header),
            Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains(messagePart));
    }

    [Test]
    public void Well_formed_requests_pass()
    {
        Assert.Multiple(() =>
        {
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.GET_FEATURES, 0)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_FEATURES, 8, 0x9)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_VRING_ADDR, 40)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_MEM_TABLE, 8 + 32)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_MEM_TABLE, 8 + (8 * 32))), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.GET_CONFIG, 12 + 256)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_CONFIG, 12 + 1)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_INFLIGHT_FD, 24)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_INFLIGHT_FD, 20)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.SET_LOG_BASE, 16)), Throws.Nothing);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(VhostUserRequest.ADD_MEM_REG, 40)), Throws.Nothing);
        });
    }

    [TestCase(0u)]
    [TestCase(2u)]
    [TestCase(3u)]
    public void Bad_version_is_rejected(uint version) =>
        AssertRejected(Request(VhostUserRequest.GET_FEATURES, 0, version), $"version {version}");

    [Test]
    public void Reply_bit_on_a_request_is_rejected() =>
        AssertRejected(Request(VhostUserRequest.GET_FEATURES, 0, VhostUserHeaderFlags.Version | VhostUserHeaderFlags.Reply), "reply bit");

    [TestCase(0x10u)]
    [TestCase(0x100u)]
    [TestCase(0x8000_0000u)]
    public void Reserved_flag_bits_are_rejected(uint reserved) =>
        AssertRejected(Request(VhostUserRequest.SET_OWNER, 0, VhostUserHeaderFlags.Version | reserved), "reserved");

    [TestCase(0xFFFF_FFFFu)]
    [TestCase(0x1001u)]
    [TestCase(0x8000_0000u)]
    public void Size_over_the_maximum_is_rejected_from_the_header_alone(uint size)
    {
        // The validator's only input is the 12-byte header: no payload, no buffer. A 4 GiB claim
        // is refused without allocating anything.
        var header = VhostUserHeader.Read(BitConverter.GetBytes(1u).Concat(BitConverter.GetBytes(1u)).Concat(BitConverter.GetBytes(size)).ToArray());
        Assert.That(header.PayloadSize, Is.EqualTo(size));
        AssertRejected(header, "exceeds the maximum");
    }

    [Test]
    public void Request_validators_take_the_header_and_nothing_else()
    {
        foreach (var name in new[] { nameof(VhostUserCodec.ValidateRequestHeader), nameof(VhostUserCodec.ValidateBackendRequestHeader) })
        {
            var parameters = typeof(VhostUserCodec).GetMethod(name)!.GetParameters();
            Assert.That(parameters, Has.Length.EqualTo(1), name);
            Assert.That(parameters[0].ParameterType.GetElementType(), Is.EqualTo(typeof(VhostUserHeader)), name);
        }
    }

    [Test]
    public void Size_over_the_maximum_is_rejected_for_unknown_codes_too() =>
        AssertRejected(new VhostUserHeader(999, VhostUserHeaderFlags.Version, 0xFFFF_FFFF), "exceeds the maximum");

    [TestCase(4u)]
    [TestCase(12u)]
    [TestCase(0u)]
    [TestCase(16u)]
    public void SET_VRING_NUM_with_wrong_size_is_rejected(uint size) =>
        AssertRejected(Request(VhostUserRequest.SET_VRING_NUM, size), "SET_VRING_NUM");

    [Test]
    public void SET_MEM_TABLE_with_partial_region_is_rejected() =>
        AssertRejected(Request(VhostUserRequest.SET_MEM_TABLE, 8 + 31), "SET_MEM_TABLE");

    [Test]
    public void SET_MEM_TABLE_with_zero_regions_is_rejected() =>
        AssertRejected(Request(VhostUserRequest.SET_MEM_TABLE, 8), "SET_MEM_TABLE");

    [Test]
    public void SET_MEM_TABLE_with_nine_regions_is_rejected() =>
        AssertRejected(Request(VhostUserRequest.SET_MEM_TABLE, 8 + (9 * 32)), "SET_MEM_TABLE");

    [TestCase(VhostUserRequest.GET_FEATURES, 8u)]
    [TestCase(VhostUserRequest.SET_FEATURES, 0u)]
    [TestCase(VhostUserRequest.SET_FEATURES, 16u)]
    [TestCase(VhostUserRequest.SET_VRING_ADDR, 32u)]
    [TestCase(VhostUserRequest.SET_VRING_KICK, 4u)]
    [TestCase(VhostUserRequest.GET_CONFIG, 11u)]
    [TestCase(VhostUserRequest.SET_CONFIG, 12u + 257u)]
    [TestCase(VhostUserRequest.SET_INFLIGHT_FD, 22u)]
    [TestCase(VhostUserRequest.ADD_MEM_REG, 32u)]
    [TestCase(VhostUserRequest.IOTLB_MSG, 26u)]
    [TestCase(VhostUserRequest.SET_DEVICE_STATE_FD, 0u)]
    [TestCase(VhostUserRequest.GET_SHARED_OBJECT, 8u)]
    [TestCase(VhostUserRequest.SET_LOG_BASE, 12u)]
    public void Size_not_matching_the_request_is_rejected(VhostUserRequest request, uint size) =>
        AssertRejected(Request(request, size), request.ToString());

    [TestCase(0u, 0u)]
    [TestCase(45u, 8u)]
    [TestCase(999u, 100u)]
    [TestCase(0xFFFF_FFFFu, 0x1000u)]
    public void Unknown_request_codes_pass_the_generic_checks(uint code, uint size)
    {
        var header = new VhostUserHeader(code, VhostUserHeaderFlags.Version, size);
        Assert.That(() => VhostUserCodec.ValidateRequestHeader(header), Throws.Nothing);
        Assert.That(VhostUserCodec.IsKnownRequest(code), Is.False);
    }

    [Test]
    public void Unknown_request_codes_still_fail_flag_checks() =>
        AssertRejected(new VhostUserHeader(999, 0x2, 0), "version 2");

    [Test]
    public void Every_known_request_accepts_its_own_minimum_size()
    {
        foreach (var request in Enum.GetValues<VhostUserRequest>())
        {
            var rule = VhostUserPayloadRules.ForRequest(request);
            Assert.That(() => VhostUserCodec.ValidateRequestHeader(Request(request, rule.Min)), Throws.Nothing, request.ToString());
            Assert.That(rule.Max, Is.LessThanOrEqualTo((uint)VhostUserCodec.MaxPayloadSize), request.ToString());
        }
    }

    // --- Back-end channel ---------------------------------------------------------------------

    [Test]
    public void Backend_requests_are_checked_against_their_table()
    {
        Assert.Multiple(() =>
        {
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(3, 0x9, 24)),
                Throws.Nothing);
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(3, 0x1, 16)),
                Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("VRING_HOST_NOTIFIER_MSG"));
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(2, 0x1, 0)),
                Throws.Nothing);
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(2, 0x1, 8)),
                Throws.Nothing);
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(1, 0x5, 32)),
                Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("reply bit"));
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(1, 0x1, 0xFFFF_FFFF)),
                Throws.TypeOf<VhostUserProtocolException>().With.Message.Contains("exceeds the maximum"));
            Assert.That(
                () => VhostUserCodec.ValidateBackendRequestHeader(new VhostUserHeader(77, 0x1, 5)),
                Throws.Nothing);
        });
    }
}
